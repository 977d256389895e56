"""The proof's workload pods on the real node, shared by tests/e2e/test_real_node.py and
examples/demo.py: the same Go program (tests/goworkload) at a 512Mi limit, three ways, and a
sampler of each pod's memory cgroup.

Sizing (limit 512Mi): 308 MiB live heap (60%), 24 MiB off-heap anonymous mmap, 400 MiB/s of
1 MiB garbage for 20 s, after idling 6 s (so the operator's watcher sees every pod first).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .images import BuiltImage
from .realnode import RealNode, placement

__all__ = [
    "LIMIT",
    "LIMIT_BYTES",
    "MemorySampler",
    "PodMemory",
    "container_env",
    "pod_log_lines",
    "proof_args",
    "proof_pods",
    "terminated",
    "workload_pod",
]

MiB = 1 << 20
LIMIT = "512Mi"
LIMIT_BYTES = 512 * MiB
LIVE_MIB = 308  # ~60% of the limit
OFFHEAP_MIB = 24
CHURN_MIB_PER_SEC = 400
DURATION = "20s"
START_DELAY = "6s"  # the watcher sees every pod Running before any memory is used


def workload_pod(
    name: str,
    image: BuiltImage,
    *,
    limit: str = LIMIT,
    args: list[str],
    annotations: dict[str, str] | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": image.ref,
        "imagePullPolicy": "Never",
        "args": args,
        "resources": {"limits": {"memory": limit}},
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"runtime": "go", "proof": name},
            "annotations": annotations or {},
        },
        "spec": {
            **placement(),
            "hostNetwork": True,  # the real node has no pod network
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
        },
    }


def proof_args() -> list[str]:
    return [
        f"-live-mib={LIVE_MIB}",
        f"-offheap-mib={OFFHEAP_MIB}",
        f"-churn-mib-per-sec={CHURN_MIB_PER_SEC}",
        f"-duration={DURATION}",
        f"-start-delay={START_DELAY}",
        "-report=1s",
    ]


@dataclass
class PodMemory:
    """Samples of one pod's memory cgroup: (seconds since the sampler started, usage bytes)."""

    name: str
    uid: str = ""
    samples: list[tuple[float, int]] = field(default_factory=list)
    peak: int = 0


class MemorySampler:
    """Reads each pod's memory cgroup every 100 ms in a thread, until stopped.

    The kubelet removes a pod's cgroup soon after its containers end, so the peak
    (``memory.max_usage_in_bytes``, monotonic) is the last value read while it existed.
    """

    def __init__(self, node: RealNode, pods: dict[str, str]) -> None:
        self.node = node
        self.pods = {name: PodMemory(name, uid) for name, uid in pods.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self.t0
            for pod in self.pods.values():
                cgroup = self.node.pod_cgroup(pod.uid)
                if cgroup is None:
                    continue
                try:
                    usage = int((cgroup / "memory.usage_in_bytes").read_text())
                    peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
                except (OSError, ValueError):
                    continue
                pod.samples.append((round(now, 2), usage))
                pod.peak = max(pod.peak, peak)
            self._stop.wait(0.1)


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    state = statuses[0].get("state") or {}
    return state.get("terminated")


def container_env(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod["spec"]["containers"][0].get("env") or [])


def pod_log_lines(node: RealNode, namespace: str, pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The workload's JSON reports, from the kubelet's CRI log file (no kubectl logs: the
    API server cannot reach a node whose only address is loopback)."""
    uid = pod["metadata"]["uid"]
    directory = node.pod_logs_dir / f"{namespace}_{pod['metadata']['name']}_{uid}" / "app"
    reports: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            # CRI format: <time> <stream> <P|F> <text>
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] == "stdout" and parts[3].startswith("{"):
                reports.append(json.loads(parts[3]))
    return reports


DOWNWARD_ENV: list[dict[str, Any]] = [
    {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
]


def proof_pods(image: BuiltImage) -> dict[str, dict[str, Any]]:
    """governed (the policy injects 460MiB), opted-out (no GOMEMLIMIT), downward-api (100%)."""
    return {
        "governed": workload_pod("governed", image, args=proof_args()),
        "opted-out": workload_pod(
            "opted-out", image, args=proof_args(), annotations={"gomemlimit.io/skip": "true"}
        ),
        "downward-api": workload_pod("downward-api", image, args=proof_args(), env=DOWNWARD_ENV),
    }
