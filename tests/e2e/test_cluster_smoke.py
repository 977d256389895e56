"""Smoke tests of the local control plane: the behaviour the operator's e2e tests rely on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster.controlplane import ControlPlane, KubectlError

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
spec:
  replicas: 3
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      containers:
      - name: app
        image: registry.invalid/smoke:1   # kwok runs no containers; never pulled
        resources:
          limits: {memory: 128Mi}
"""

CRD_NAME = "smokewidgets.e2e.gomemlimit.io"
CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {CRD_NAME}
spec:
  group: e2e.gomemlimit.io
  scope: Namespaced
  names: {{kind: SmokeWidget, listKind: SmokeWidgetList, plural: smokewidgets,
          singular: smokewidget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
"""

WIDGET = """
apiVersion: e2e.gomemlimit.io/v1
kind: SmokeWidget
metadata:
  name: w1
spec:
  size: 3
"""


def _json(cluster: ControlPlane, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def test_deployment_pods_are_admitted_scheduled_and_running(
    cluster: ControlPlane, namespace: str, k8s_api: client.ApiClient
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    cluster.kubectl("rollout", "status", "-n", namespace, "deployment/smoke", "--timeout=90s")

    nodes = client.CoreV1Api(k8s_api).list_node(label_selector="type=kwok").items
    kwok_nodes = {n.metadata.name for n in nodes if n.metadata}
    assert len(kwok_nodes) >= 2
    pods = _json(cluster, "get", "pods", "-n", namespace, "-l", "app=smoke")["items"]
    assert len(pods) == 3
    for pod in pods:
        spec, status = pod["spec"], pod["status"]
        assert status["phase"] == "Running", status
        assert spec["nodeName"] in kwok_nodes
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["PodScheduled"] == "True"
        assert conditions["Ready"] == "True"
        # Admission ran: the ServiceAccount plugin mounted the projected API token volume.
        assert spec["serviceAccountName"] == "default"
        assert any(v["name"].startswith("kube-api-access-") for v in spec["volumes"])


def test_crd_is_served(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=CRD)
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        deadline = time.monotonic() + 30
        while True:  # kubectl's discovery may lag the Established condition by a moment
            try:
                cluster.kubectl("apply", "-n", namespace, "-f", "-", input=WIDGET)
                break
            except KubectlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        widget = _json(cluster, "get", "-n", namespace, "smokewidget", "w1")
        assert widget["kind"] == "SmokeWidget"
        assert widget["spec"] == {"size": 3}
        assert widget["metadata"]["resourceVersion"]
    finally:
        cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false")


def test_server_and_kubectl_report_the_pinned_version(cluster: ControlPlane) -> None:
    want = cluster.binaries.versions["K8S_VERSION"]
    version = _json(cluster, "version")
    assert version["serverVersion"]["gitVersion"] == want
    assert version["clientVersion"]["gitVersion"] == want


def test_helm_installs_a_chart(cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    short = cluster.helm("version", "--short").stdout.strip()
    assert short.split("+")[0] == cluster.binaries.versions["HELM_VERSION"]

    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
        "data:\n  answer: {{ .Values.answer | quote }}\n"
    )
    (chart / "values.yaml").write_text("answer: 42\n")
    cluster.helm("install", "smoke", str(chart), "-n", namespace, "--wait", "--timeout=60s")

    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("smoke", "deployed")]
    configmap = _json(cluster, "get", "configmap", "smoke", "-n", namespace)
    assert configmap["data"] == {"answer": "42"}
