"""Hostile pods through the real API server: what the webhook answers, and how long the
operator's event loop stalls meanwhile (README, "The value contract": the guarantees).

Every pod is sent with ``kubectl create --dry-run=server``: it is validated, passed to the
webhook and never stored, which is what a tenant with only pod-create rights can do for free.
The stall is measured from outside: a thread polls the operator's /healthz, served by the
same event loop as the webhook, on one keep-alive connection, and records the slowest answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import (
    OperatorProcess,
    cluster_policies,
    crds,
    operator_process,
    operator_service,
)

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]

IMAGE = "registry.invalid/app:1"
STALL_BUDGET = 0.1  # seconds: a bucket bound of gomemlimit_event_loop_stall_seconds


_POLL = """
import http.client, json, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
slowest, answers = 0.0, 0
try:
    print("polling", flush=True)
    while True:
        started = time.perf_counter()
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        slowest, answers = max(slowest, time.perf_counter() - started), answers + 1
        time.sleep(0.002)
finally:
    print(json.dumps([slowest, answers]), flush=True)
"""


class HealthPoller:
    """Polls /healthz every few milliseconds from a separate process (so that this test
    process, busy serialising large pods, cannot delay it) and keeps the slowest answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.slowest = 0.0
        self.answers = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthPoller:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _POLL, str(self.port)], stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "polling"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        out, _ = self._process.communicate(timeout=30)
        self.slowest, self.answers = json.loads(out.strip().splitlines()[-1])


def pod(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": containers},
    }


def fan_out(count: int, extra_env: int = 0, limit: str = "512Mi") -> list[dict[str, Any]]:
    """``count`` containers whose GOMEMLIMIT reads the last one's limit by containerName."""
    ref = {"resourceFieldRef": {"resource": "limits.memory", "containerName": f"c{count - 1}"}}
    filler = [{"name": f"V{i}", "value": "x"} for i in range(extra_env)]
    return [
        {
            "name": f"c{i}",
            "image": IMAGE,
            "resources": {"limits": {"memory": limit}},
            "env": [*filler, {"name": "GOMEMLIMIT", "valueFrom": ref}],
        }
        for i in range(count)
    ]


def dry_run(
    cluster: ControlPlane, namespace: str, manifest: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    result = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-n", namespace, "-f", "-",
        input=json.dumps(manifest),
    )  # fmt: skip
    return json.loads(result.stdout), result.stderr


def env_of(obj: dict[str, Any], index: int = 0) -> dict[str, str]:
    entries = obj["spec"]["containers"][index].get("env") or []
    return {e["name"]: e.get("value", "<valueFrom>") for e in entries}


@pytest.fixture
def governed(
    namespace: str,
    cluster_policies: Callable[..., dict[str, Any]],
    operator_process: OperatorProcess,
) -> str:
    """The test's namespace, under a policy with maxHeadroom (what made 12E dangerous), and
    onExisting: override, so that every container with a resourceFieldRef gets rewritten."""
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    cluster_policies(
        "hostile", {"maxHeadroom": "1Gi", "onExisting": "override", "namespaceSelector": selector}
    )
    return namespace


def test_a_limit_past_maxint64_gets_no_value_and_a_warning(
    cluster: ControlPlane, governed: str
) -> None:
    app = {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": "12E"}}}
    preview, warnings = dry_run(cluster, governed, pod("huge", [app]))
    assert preview["spec"]["containers"][0]["resources"]["limits"]["memory"] == "12E"
    assert "GOMEMLIMIT" not in env_of(preview)  # the old engine wrote 11444091796874MiB
    assert "gomemlimit: container app: no GOMEMLIMIT can be set: the policy gives " in warnings


def test_the_api_server_stores_absurd_limits_and_the_webhook_answers_at_once(
    cluster: ControlPlane, governed: str, operator_process: OperatorProcess
) -> None:
    app = {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": "1e999999"}}}
    with HealthPoller(operator_process.health_port) as poller:
        preview, _ = dry_run(cluster, governed, pod("absurd", [app]))
    assert preview["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1e999999"
    assert "GOMEMLIMIT" not in env_of(preview)
    assert poller.slowest < STALL_BUDGET, poller.slowest


def test_worst_case_pods_stall_the_event_loop_less_than_100ms(
    cluster: ControlPlane, governed: str, operator_process: OperatorProcess
) -> None:
    too_large_before = operator_process.metric(
        "gomemlimit_admission_requests_total", result="too_large"
    )
    # At the bounds (256 containers, 8,192 env entries), all evaluated and rewritten; past
    # them (1,000 containers), refused before any per-container work. (Bodies up to the API
    # server's 3 MiB reach the handler: test_serving_limits.py sends a 2 MiB pod.)
    at_bounds = pod("at-bounds", fan_out(256, extra_env=31))
    beyond = pod("beyond", fan_out(1000))
    seen: dict[str, tuple[float, dict[str, float]]] = {}
    for name, manifest in (("at the bounds", at_bounds), ("beyond the bounds", beyond)):
        before = stalls(operator_process)
        with HealthPoller(operator_process.health_port) as poller:
            for _ in range(3):
                preview, warnings = dry_run(cluster, governed, manifest)
        after = stalls(operator_process)
        assert poller.answers > 10
        seen[name] = (poller.slowest, {le: after[le] - before.get(le, 0) for le in after})
        if name == "at the bounds":
            assert env_of(preview, 0)["GOMEMLIMIT"] == "460MiB"
            assert env_of(preview, 255)["GOMEMLIMIT"] == "460MiB"
        else:
            assert "GOMEMLIMIT" in env_of(preview)  # unchanged: still the resourceFieldRef
            assert "gomemlimit evaluates at most 256" in warnings
    print(f"(slowest /healthz answer in s, event-loop stalls per bucket): {seen}")
    too_large_after = operator_process.metric(
        "gomemlimit_admission_requests_total", result="too_large"
    )
    assert too_large_after - too_large_before == 3
    # A stall is the loop's own CPU time (loop_monitor.py). The /healthz wall time adds
    # whatever else the 2 cores were doing (the API server validating the same pods).
    for _, (_, buckets) in seen.items():
        assert buckets[str(STALL_BUDGET)] == buckets["+Inf"], seen  # none longer than 100 ms


def stalls(operator: OperatorProcess) -> dict[str, float]:
    """Event-loop stalls so far, per histogram bucket (``le`` -> cumulative count)."""
    return {
        dict(labels)["le"]: value
        for labels, value in operator.samples("gomemlimit_event_loop_stall_seconds_bucket").items()
    }
