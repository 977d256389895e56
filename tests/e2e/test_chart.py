"""The chart's output, validated strictly by the local Kubernetes 1.35 API server.

``helm template`` with default and non-default values, then ``kubectl apply
--dry-run=server --validate=strict`` of every object whose API the cluster serves (after the
CRDs are applied for real). The operator's and the test hook's pods are also dry-run created
as Pods in a namespace that enforces the ``restricted`` Pod Security Standard. Objects of
APIs this cluster lacks (prometheus-operator, cert-manager) are listed, not validated here.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane
from tests.unit.install.chart_support import CHART, CI_VALUES, ROOT

ABSENT_APIS = ("monitoring.coreos.com/", "cert-manager.io/")


@pytest.fixture(scope="module")
def restricted_namespace(cluster: ControlPlane) -> Iterator[str]:
    name = f"chart-{secrets.token_hex(3)}"
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(namespace))
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name}"
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _render(cluster: ControlPlane, namespace: str, values: Path | None) -> list[dict[str, Any]]:
    args = ["-f", str(values)] if values else []
    result = cluster.helm("template", "rel", str(CHART), "--namespace", namespace, *args)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


HOST_NETWORK_WARNING = (
    'Warning: would violate PodSecurity "restricted:latest": host namespaces (hostNetwork=true)'
)
"""hostNetwork is a host namespace: no Pod Security level below privileged allows it."""


def _dry_run(
    cluster: ControlPlane, documents: list[dict[str, Any]], *, host_network: bool = False
) -> str:
    stream = {"apiVersion": "v1", "kind": "List", "items": documents}
    result = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-o",
        "name",
        "-f",
        "-",
        input=json.dumps(stream),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning")]
    assert warnings == ([HOST_NETWORK_WARNING] if host_network else []), result.stderr
    return result.stdout


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "default")
def test_rendered_chart_passes_server_side_dry_run(
    cluster: ControlPlane, restricted_namespace: str, values: Path | None
) -> None:
    documents = _render(cluster, restricted_namespace, values)
    served = [d for d in documents if not d["apiVersion"].startswith(ABSENT_APIS)]
    assert len(served) >= 9
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    host_network = template["spec"].get("hostNetwork", False)
    names = _dry_run(cluster, served, host_network=host_network)
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/" in names
    assert "deployment.apps/rel-gomemlimit-operator" in names

    # The Deployment's pod, as a Pod: the restricted standard is enforced on Pods only.
    if host_network:
        return  # a restricted namespace refuses it, as HOST_NETWORK_WARNING says
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "operator-pod",
            "namespace": restricted_namespace,
            "labels": template["metadata"]["labels"],
        },
        # Its own ServiceAccount is in the rendered set, which a dry run does not create.
        "spec": {**template["spec"], "serviceAccountName": "default"},
    }
    _dry_run(cluster, [pod])


def test_deploy_directory_passes_server_side_dry_run(cluster: ControlPlane) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "deploy" / "01-crds.yaml"))
    cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "00-namespace.yaml"))
    try:
        result = cluster.kubectl(
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            str(ROOT / "deploy" / "02-operator.yaml"),
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        cluster.kubectl("delete", "namespace", "gomemlimit-system", "--wait=false", check=False)
