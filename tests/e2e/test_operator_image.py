"""The operator's image (tests/cluster/operator_image.py), run for real on the real node.

The image is built without a daemon, imported into the node's containerd with ``ctr``, and
started by the kubelet under the ``restricted`` security context the chart uses:
``runAsNonRoot`` (no ``runAsUser``: the image's numeric USER is what is checked),
``readOnlyRootFilesystem``, no privilege escalation, no capabilities, RuntimeDefault seccomp,
and an emptyDir at ``/tmp``. The node has no pod network and the API server cannot reach its
kubelet, so pods are ``hostNetwork`` and their output is read from the kubelet's log files.

1. ``gomemlimit version`` (the entrypoint, with ``args``) exits 0 and prints the version; a
   second container reports its UID/GID and that ``/`` is read-only but ``/tmp`` writable.
2. ``gomemlimit operator`` (the default CMD) runs against the API server with a mounted
   certificate, serves ``/healthz`` on the host's loopback, and its process runs as 65532
   (read from ``/proc/<pid>/status`` on this host).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from gomemlimit_operator.runtime.certs import generate
from tests.cluster.controlplane import ControlPlane
from tests.cluster.images import BuiltImage
from tests.cluster.operator_image import (
    ENTRYPOINT,
    UID,
    build_operator_image,
    image_size,
    import_operator_image,
    operator_version,
)
from tests.cluster.realnode import RealNode, placement
from tests.e2e.operator_harness import crds, free_ports, get, wait_until

__all__ = ["crds"]

PROBE = """
import json, os
out = {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(), "groups": os.getgroups()}
for path in ("/opt/gomemlimit/probe", "/probe"):
    try:
        open(path, "w").close()
        out[path] = "written"
    except OSError as exc:
        out[path] = exc.strerror
with open("/tmp/probe", "w") as f:
    f.write("ok")
out["/tmp/probe"] = "written"
out["home"] = os.environ["HOME"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def operator_image(real_node: RealNode) -> BuiltImage:
    t0 = time.monotonic()
    image = build_operator_image()
    import_operator_image(real_node, image)
    sizes = image_size(image)
    print(
        f"operator image {' '.join(image.refs)}: {sizes['archive'] / 2**20:.1f} MiB, "
        f"{sizes['gzip'] / 2**20:.1f} MiB gzip'd; built/found and imported in "
        f"{time.monotonic() - t0:.1f}s"
    )
    listed = real_node.ctr("images", "ls", "-q").stdout.split()
    assert any(ref.endswith(image.ref) for ref in listed), listed
    return image


def restricted(read_only: bool = True) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": read_only,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_spec(containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        **placement(),
        "hostNetwork": True,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
        "containers": containers,
        **extra,
    }


def container(name: str, image: BuiltImage, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image.ref,
        "imagePullPolicy": "Never",
        "securityContext": restricted(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "64Mi"}},
        **fields,
    }


def log_lines(node: RealNode, namespace: str, pod: dict[str, Any], name: str) -> list[str]:
    """A container's stdout/stderr lines from the kubelet's CRI log files."""
    uid = pod["metadata"]["uid"]
    directory = node.pod_logs_dir / f"{namespace}_{pod['metadata']['name']}_{uid}" / name
    lines: list[str] = []
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)  # <time> <stream> <P|F> <text>
            if len(parts) == 4:
                lines.append(parts[3])
    return lines


def test_version_as_65532_on_a_read_only_root(
    cluster: ControlPlane, real_node: RealNode, namespace: str, operator_image: BuiltImage
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "version"},
        "spec": pod_spec(
            [
                container("version", operator_image, args=["version"]),
                container(
                    "probe", operator_image, command=["/opt/gomemlimit/bin/python", "-c", PROBE]
                ),
            ]
        ),
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def done() -> dict[str, Any] | None:
        live: dict[str, Any] = get(cluster, "pod", "version", "-n", namespace)
        return live if live["status"].get("phase") in ("Succeeded", "Failed") else None

    final = wait_until(done, "the version pod to finish", timeout=120, interval=0.5)
    statuses = {s["name"]: s for s in final["status"]["containerStatuses"]}
    summary = json.dumps(final["status"], indent=1)
    assert final["status"]["phase"] == "Succeeded", summary
    for status in statuses.values():
        assert status["state"]["terminated"]["exitCode"] == 0, summary
    assert log_lines(real_node, namespace, final, "version") == [f"gomemlimit {operator_version()}"]
    [report] = [json.loads(x) for x in log_lines(real_node, namespace, final, "probe")]
    assert report["uid"] == report["euid"] == UID, report
    assert report["gid"] == UID, report
    assert report["/opt/gomemlimit/probe"] == "Read-only file system", report
    assert report["/probe"] == "Read-only file system", report
    assert report["/tmp/probe"] == "written", report
    assert report["home"] == "/tmp", report


@pytest.fixture
def operator_rbac(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    """A ServiceAccount bound to cluster-admin (least privilege is the chart's test)."""
    name = f"image-e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "serviceaccount", "gomemlimit", "-n", namespace)
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        name,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:gomemlimit",
    )
    try:
        yield "gomemlimit"
    finally:
        cluster.kubectl("delete", "clusterrolebinding", name, "--ignore-not-found")


def _http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


def _process_uids(marker: str) -> list[tuple[int, list[int]]]:
    """(pid, [real, effective, saved, fs UID]) of this host's processes whose argv holds
    ``marker`` and runs the image's entrypoint."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if marker.encode() in argv and any(a.endswith(ENTRYPOINT[0].encode()) for a in argv):
            [uids] = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
            found.append((int(entry.name), [int(u) for u in uids]))
    return found


def test_operator_serves_healthz_as_65532(
    cluster: ControlPlane,
    real_node: RealNode,
    namespace: str,
    operator_image: BuiltImage,
    crds: None,
    operator_rbac: str,
) -> None:
    bundle = generate(["127.0.0.1", "localhost"])
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tls"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(bundle.cert_pem).decode(),
            "tls.key": base64.b64encode(bundle.key_pem).decode(),
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    webhook, metrics, health = free_ports(3)
    api = urlparse(cluster.server)
    operator = container(
        "operator",
        operator_image,
        # no command, no "operator" arg: the image's default CMD
        env=[
            # No kube-proxy: the `kubernetes` Service's ClusterIP does not route; the pod
            # shares the host's loopback, where the API server listens.
            {"name": "KUBERNETES_SERVICE_HOST", "value": api.hostname},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
            {"name": "POD_NAMESPACE", "value": namespace},
            {"name": "GOMEMLIMIT_OPERATOR_WEBHOOK_PORT", "value": str(webhook)},
            {"name": "GOMEMLIMIT_OPERATOR_METRICS_PORT", "value": str(metrics)},
            {"name": "GOMEMLIMIT_OPERATOR_HEALTH_PORT", "value": str(health)},
            {"name": "GOMEMLIMIT_OPERATOR_TLS_CERT_FILE", "value": "/certs/tls.crt"},
            {"name": "GOMEMLIMIT_OPERATOR_TLS_KEY_FILE", "value": "/certs/tls.key"},
            {"name": "GOMEMLIMIT_OPERATOR_WATCH_NAMESPACES", "value": namespace},
        ],
        volumeMounts=[
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "certs", "mountPath": "/certs", "readOnly": True},
        ],
    )
    spec = pod_spec([operator], serviceAccountName=operator_rbac)
    spec["volumes"].append({"name": "certs", "secret": {"secretName": "tls"}})
    spec["restartPolicy"] = "Always"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator"}, "spec": spec}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def healthy() -> bool | None:
        live = get(cluster, "pod", "operator", "-n", namespace)
        for status in live["status"].get("containerStatuses", []):
            if "terminated" in status.get("lastState", {}) or "terminated" in status["state"]:
                lines = log_lines(real_node, namespace, live, "operator")
                pytest.fail("the operator container exited:\n" + "\n".join(lines[-40:]))
        return _http_status(health, "/healthz") == 200 or None

    try:
        wait_until(healthy, f"/healthz on 127.0.0.1:{health}", timeout=120, interval=0.5)
    except AssertionError:
        live = get(cluster, "pod", "operator", "-n", namespace)
        print("\n".join(log_lines(real_node, namespace, live, "operator")[-40:]))
        raise
    assert _http_status(metrics, "/metrics") == 200
    processes = _process_uids("operator")
    assert processes, "no operator process found on this host"
    for pid, uids in processes:
        assert uids == [UID] * 4, (pid, uids)
    cluster.kubectl("delete", "pod", "operator", "-n", namespace, "--wait=true", timeout=60)
