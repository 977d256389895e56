"""A Helm release of the chart on the real node, for the install and fault tests.

The local cluster has no kube-proxy and no pod network, so (as the chart's ``hostNetwork``
value is for) the operator runs in the node's network namespace and binds one address of the
loopback service CIDR, which is also its Service's ClusterIP: the API server dials that
ClusterIP and reaches the operator directly. Replicas on the one node share their ports
(``SO_REUSEPORT``), so a rolling update and two replicas work as on a real cluster.

:func:`install_release` is the module fixtures' body: a namespace that enforces
``privileged`` (``hostNetwork`` needs it) and warns against ``restricted``, free ports, the
operator's image imported into the node; the release is uninstalled afterwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane
from tests.cluster.images import BuiltImage
from tests.cluster.operator_image import import_operator_image
from tests.cluster.realnode import RealNode, placement
from tests.e2e.operator_harness import free_ports, get, session_operator, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "gomemlimit-operator"
IMAGE = "registry.invalid/app:1"  # kwok pods: never pulled
OPERATOR_SELECTOR = "app.kubernetes.io/name=gomemlimit-operator"


@dataclass
class Release:
    cluster: ControlPlane
    node: RealNode
    image: BuiltImage
    ports: dict[str, int]
    name: str
    namespace: str
    cluster_ip: str
    values: list[str] = field(default_factory=list)

    @property
    def fullname(self) -> str:
        return f"{self.name}-gomemlimit-operator"

    def helm(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return self.cluster.helm(*args, timeout=timeout)

    def install(self, *extra: str, command: str = "install") -> subprocess.CompletedProcess[str]:
        """``helm install`` (or ``upgrade``) of the chart with this release's values, and
        ``extra`` ones after them, waiting for the replicas to be ready."""
        return self.helm(
            command, self.name, str(CHART), "-n", self.namespace, *self.values, *extra,
            "--wait", "--timeout=180s",
        )  # fmt: skip

    def operator_pods(self) -> list[dict[str, Any]]:
        return list(
            get(self.cluster, "pods", "-n", self.namespace, "-l", OPERATOR_SELECTOR)["items"]
        )

    def ready_operator_pods(self) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.operator_pods()
            if pod["metadata"].get("deletionTimestamp") is None
            and all(s.get("ready") for s in pod["status"].get("containerStatuses") or [{}])
        ]

    def metrics_url(self) -> str:
        return f"http://{self.cluster_ip}:{self.ports['metrics']}/metrics"


def api_server(cluster: ControlPlane) -> tuple[str, str]:
    """(host, port) of the API server, for the pod's in-cluster config: without kube-proxy,
    the ``kubernetes`` Service's ClusterIP leads nowhere."""
    server = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"][
        "server"
    ]
    parsed = urllib.parse.urlparse(server)
    return str(parsed.hostname), str(parsed.port)


def helm_values(
    cluster: ControlPlane,
    image: BuiltImage,
    ports: dict[str, int],
    cluster_ip: str,
    *,
    replicas: int = 1,
) -> list[str]:
    repository, _, tag = image.ref.rpartition(":")
    host, port = api_server(cluster)
    scheduling = placement()
    return [
        f"--set=image.repository={repository}",
        f"--set=image.tag={tag}",
        "--set=image.pullPolicy=Never",
        f"--set=replicas={replicas}",
        "--set=hostNetwork=true",
        f"--set=bindHost={cluster_ip}",
        f"--set=service.clusterIP={cluster_ip}",
        f"--set=webhook.port={ports['webhook']}",
        f"--set=metricsPort={ports['metrics']}",
        f"--set=healthPort={ports['health']}",
        f"--set-json=nodeSelector={json.dumps(scheduling['nodeSelector'])}",
        f"--set-json=tolerations={json.dumps(scheduling['tolerations'])}",
        "--set-json=extraEnv="
        + json.dumps(
            [
                {"name": "KUBERNETES_SERVICE_HOST", "value": host},
                {"name": "KUBERNETES_SERVICE_PORT", "value": port},
            ]
        ),
    ]


@contextlib.contextmanager
def install_release(
    cluster: ControlPlane,
    node: RealNode,
    *,
    name: str,
    namespace: str,
    cluster_ip: str,
    replicas: int = 1,
    extra_values: Sequence[str] = (),
) -> Iterator[Release]:
    """The namespace and values of a release (installed by the tests, or by the caller),
    uninstalled and deleted afterwards."""
    image = import_operator_image(node)
    webhook, metrics, health = free_ports(3)
    ports = {"webhook": webhook, "metrics": metrics, "health": health}
    cluster.kubectl("create", "namespace", namespace)
    # hostNetwork is not allowed by `restricted` (nor `baseline`): enforce privileged, and warn
    # and audit against restricted, so that what restricted would refuse is visible.
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=privileged",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/audit=restricted",
    )
    values = [*helm_values(cluster, image, ports, cluster_ip, replicas=replicas), *extra_values]
    try:
        yield Release(cluster, node, image, ports, name, namespace, cluster_ip, values)
    finally:
        cluster.helm("uninstall", name, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def pod_manifest(name: str, limit: str = "512Mi", **spec: Any) -> dict[str, Any]:
    """A pod for kwok nodes (never run) with one container ``app`` limited to ``limit``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"runtime": "go"}},
        "spec": {
            "containers": [
                {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": limit}}}
            ],
            **spec,
        },
    }


def create_pod(cluster: ControlPlane, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    out = cluster.kubectl(
        "create", "-n", namespace, "-o", "json", "-f", "-",
        input=json.dumps(pod_manifest(name, **spec)),
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def gomemlimit(pod: dict[str, Any]) -> str | None:
    """The GOMEMLIMIT literal of the pod's first container, if it has one."""
    for entry in pod["spec"]["containers"][0].get("env") or []:
        if entry["name"] == "GOMEMLIMIT":
            value = entry.get("value")
            return None if value is None else str(value)
    return None


def governed_namespace(cluster: ControlPlane, name: str) -> str:
    """A new namespace with a default GoMemPolicy (0.9 of each limit)."""
    cluster.kubectl("create", "namespace", name)
    wait_until(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        f"the default ServiceAccount of {name}",
        timeout=30,
    )
    policy = {
        "apiVersion": "gomemlimit.io/v1alpha1",
        "kind": "GoMemPolicy",
        "metadata": {"name": "go", "namespace": name},
        "spec": {},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
    return name


@pytest.fixture(scope="module")
def only_this_webhook(cluster: ControlPlane) -> Iterator[None]:
    """The session's --dev operator (started by other modules) would mutate these pods too,
    so that a value could come from it rather than from the install: stopped for this module
    (it removes its webhook configuration on exit) and started again afterwards."""
    session = session_operator(cluster)
    was_running = session is not None and session.running
    if session is not None and was_running:
        session.stop()
    try:
        yield
    finally:
        if session is not None and was_running:
            session.start()


def operator_log_lines(release: Release) -> list[str]:
    """Every line the operator containers of the release wrote, as the node keeps them."""
    lines: list[str] = []
    for path in sorted(release.node.pod_logs_dir.glob(f"{release.namespace}_*/**/*.log")):
        lines += path.read_text(errors="replace").splitlines()
    return lines


def print_operator_logs(release: Release, limit: int = 4000) -> None:
    """The end of each operator container's log on the node, for a failure's report."""
    for pod in release.operator_pods():
        uid = pod["metadata"]["uid"]
        logs = release.node.pod_logs_dir / f"{release.namespace}_{pod['metadata']['name']}_{uid}"
        for path in sorted(logs.rglob("*.log")):
            print(path, path.read_text()[-limit:])
