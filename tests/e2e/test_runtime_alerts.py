"""The Go runtime alerts, end to end on the real node: real Go programs built with
client_golang, the real kubelet's cAdvisor, a real Prometheus with the shipped rules.

Three hostNetwork pods of tests/goworkload run under ``limits.memory: 256Mi`` (opted out of any
webhook with ``gomemlimit.io/skip``):

* ``envfrom``: GOMEMLIMIT=268435456 (100% of the limit) from a ConfigMap through ``envFrom``,
  client_golang's default registry: GoRuntimeMemoryLimitMissing fires (``not_below_limit``);
* ``pressure``: GOMEMLIMIT=200MiB holding 185 MiB live, with the opt-in runtime metrics
  (``go_gc_heap_live_bytes``): GoHeapNearMemoryLimit fires;
* ``healthy``: GOMEMLIMIT=230MiB, 32 MiB live: neither fires.

Prometheus (``for:`` 0s, 1 s scrapes and evaluations) scrapes each program on its loopback
port with the ``namespace``, ``pod`` and ``container`` labels a PodMonitor would set, and the
kubelet's ``/metrics/cadvisor`` over HTTPS with the API server's kubelet client certificate.
The container limits the rules join with are the kubelet's, not the pod specs'.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gomemlimit_operator.install.dashboard import queries
from tests.cluster.controlplane import ControlPlane
from tests.cluster.images import BuiltImage
from tests.cluster.proof import workload_pod
from tests.cluster.realnode import RealNode
from tests.e2e.operator_harness import free_ports, get, wait_until
from tests.e2e.prometheus_harness import api, firing, run_prometheus

MiB = 1 << 20
LIMIT = "256Mi"
LIMIT_BYTES = 256 * MiB
CONTAINER = "app"  # workload_pod's container
SKIP = {"gomemlimit.io/skip": "true"}
MISSING = "GoRuntimeMemoryLimitMissing"
PRESSURE = "GoHeapNearMemoryLimit"


# name: (live MiB, GOMEMLIMIT from env or None for envFrom, opt-in runtime metrics)
PODS: dict[str, tuple[int, str | None, bool]] = {
    "envfrom": (16, None, False),
    "pressure": (185, "200MiB", True),
    "healthy": (32, "230MiB", True),
}


def _pods(image: BuiltImage, ports: dict[str, int]) -> list[dict[str, Any]]:
    manifests = []
    for name, (live_mib, gomemlimit, runtime_metrics) in PODS.items():
        args = [
            f"-live-mib={live_mib}",
            "-churn-mib-per-sec=16",
            "-chunk-kib=256",
            "-report=10s",
            f"-metrics-addr=127.0.0.1:{ports[name]}",
            *(["-runtime-metrics"] if runtime_metrics else []),
        ]
        env = [{"name": "GOMEMLIMIT", "value": gomemlimit}] if gomemlimit else None
        pod = workload_pod(name, image, limit=LIMIT, args=args, annotations=SKIP, env=env)
        if gomemlimit is None:  # 268435456, 100% of the limit, from the ConfigMap
            pod["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "go-env"}}]
        manifests.append(pod)
    return manifests


def _scrape_configs(node: RealNode, namespace: str, ports: dict[str, int]) -> list[dict[str, Any]]:
    pki = node.cluster_dir / "pki"
    kubelet_port = yaml.safe_load(node.kubelet_config.read_text())["port"]
    go_apps = {
        "job_name": "go-apps",
        "static_configs": [
            {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"namespace": namespace, "pod": pod, "container": CONTAINER},
            }
            for pod, port in ports.items()
        ],
    }
    cadvisor = {
        "job_name": "kubelet-cadvisor",
        "scheme": "https",
        "metrics_path": "/metrics/cadvisor",
        "tls_config": {
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "apiserver-kubelet-client.crt"),
            "key_file": str(pki / "apiserver-kubelet-client.key"),
        },
        "static_configs": [{"targets": [f"127.0.0.1:{kubelet_port}"]}],
    }
    return [go_apps, cadvisor]


def _by_pod(url: str, expr: str) -> dict[str, dict[str, Any]]:
    """The instant vector of ``expr``: each sample's labels and value, by pod."""
    result = api(url, "query", query=expr)["result"]
    return {s["metric"]["pod"]: {**s["metric"], "value": float(s["value"][1])} for s in result}


def _result(url: str, expr: str) -> list[dict[str, Any]] | None:
    return list(api(url, "query", query=expr)["result"]) or None


def _all_pods(url: str, expr: str, pods: dict[str, int]) -> dict[str, dict[str, Any]] | None:
    """``_by_pod`` once every one of ``pods`` has a sample, else None."""
    found = _by_pod(url, expr)
    return found if set(found) == set(pods) else None


@pytest.fixture
def go_pods(
    cluster: ControlPlane, namespace: str, real_node: RealNode, goworkload_image: BuiltImage
) -> Iterator[dict[str, int]]:
    """The three pods Running, by name, with their metrics ports; deleted afterwards."""
    names = tuple(PODS)
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "go-env"},
        "data": {"GOMEMLIMIT": str(LIMIT_BYTES)},
    }
    manifests = [config_map, *_pods(goworkload_image, ports)]
    try:
        for manifest in manifests:
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

        def running() -> bool:
            items = get(cluster, "pods", "-n", namespace)["items"]
            phases = {p["metadata"]["name"]: p["status"].get("phase") for p in items}
            assert "Failed" not in phases.values(), phases
            return phases == dict.fromkeys(names, "Running")

        wait_until(running, "the three Go pods to run on the real node", timeout=90)
        yield ports
    finally:
        cluster.kubectl(
            "delete", "pods", "--all", "-n", namespace, "--wait=true", "--timeout=60s",
            check=False,
        )  # fmt: skip


def test_runtime_limit_and_heap_pressure_alerts_fire_for_the_right_pods(
    cluster: ControlPlane,
    namespace: str,
    real_node: RealNode,
    go_pods: dict[str, int],
    tmp_path: Path,
) -> None:
    scrape = _scrape_configs(real_node, namespace, go_pods)
    with run_prometheus(cluster.binaries.prometheus, tmp_path, scrape) as url:
        started = time.monotonic()

        # The kubelet's cAdvisor, not the pod spec, gives the container limits the rules join.
        cadvisor = (
            f'container_spec_memory_limit_bytes{{namespace="{namespace}",container="{CONTAINER}"}}'
        )
        raw = wait_until(
            lambda: _all_pods(url, cadvisor, go_pods),
            "cAdvisor's container limits of the three pods",
            timeout=60,
        )
        for series in raw.values():
            assert series["value"] == LIMIT_BYTES
            assert series["job"] == "kubelet-cadvisor"
            assert series["image"].startswith("gomemlimit.local/goworkload")
            assert series["id"]
            assert series["name"]
        limits = wait_until(
            lambda: _all_pods(url, "gomemlimit:container_memory_limit_bytes", go_pods),
            "the recorded container limits",
            timeout=30,
        )
        assert {pod: s["value"] for pod, s in limits.items()} == dict.fromkeys(go_pods, LIMIT_BYTES)
        # Only the join labels are left.
        assert {frozenset(s) for s in limits.values()} == {
            frozenset({"__name__", "namespace", "pod", "container", "value"})
        }

        # What each Go runtime uses: envFrom's value reached the runtime.
        runtime = wait_until(
            lambda: _all_pods(url, "gomemlimit:go_runtime_limit_bytes", go_pods),
            "go_gc_gomemlimit_bytes of the three programs",
            timeout=60,
        )
        assert {pod: s["value"] for pod, s in runtime.items()} == {
            "envfrom": LIMIT_BYTES,
            "pressure": 200 * MiB,
            "healthy": 230 * MiB,
        }

        def ours(alertname: str) -> dict[str, dict[str, str]]:
            return {
                a["pod"]: a
                for a in firing(url)
                if a["alertname"] == alertname and a.get("namespace") == namespace
            }

        missing = wait_until(lambda: ours(MISSING), f"{MISSING} to fire", timeout=60)
        pressure = wait_until(lambda: ours(PRESSURE), f"{PRESSURE} to fire", timeout=90)
        print(f"alerts fired after {time.monotonic() - started:.1f}s")
        assert set(missing) == {"envfrom"}
        assert missing["envfrom"]["container"] == CONTAINER
        assert missing["envfrom"]["reason"] == "not_below_limit"
        assert set(pressure) == {"pressure"}
        assert pressure["pressure"]["container"] == CONTAINER
        # The live heap the GC marked (the opt-in series), not the heap in use.
        live = _by_pod(url, "gomemlimit:go_heap_live_bytes")
        marked = _by_pod(url, f'go_gc_heap_live_bytes{{namespace="{namespace}"}}')
        assert set(marked) == {"pressure", "healthy"}
        assert live["pressure"]["value"] == marked["pressure"]["value"]
        assert 185 * MiB <= live["pressure"]["value"] < 200 * MiB
        assert live["healthy"]["value"] / (230 * MiB) < 0.5

        # Every Go runtime panel of the dashboard shows data (GC CPU after two scrapes).
        for expr in queries("go-runtime"):
            wait_until(
                functools.partial(_result, url, expr),
                f"data for the dashboard query {expr}",
                timeout=30,
            )

        # The two with the opt-in runtime metrics; the default registry has no GC CPU figure.
        # The runtime updates its CPU classes at the end of each GC: NaN until two GCs apart.
        def gc_cpu_fractions() -> dict[str, float] | None:
            found = _by_pod(url, "gomemlimit:go_gc_cpu_fraction:rate5m")
            values = {pod: s["value"] for pod, s in found.items()}
            complete = set(values) == {"pressure", "healthy"}
            return values if complete and not any(map(math.isnan, values.values())) else None

        gc_cpu = wait_until(gc_cpu_fractions, "the GC CPU fraction of both programs", timeout=60)
        print(f"GC CPU fraction: {gc_cpu}")
        assert all(0 < v < 1 for v in gc_cpu.values())
        assert "envfrom" not in _by_pod(url, "gomemlimit:go_gc_cpu_fraction:rate5m")

        # A few more evaluations: the healthy pod still fires nothing, the others stay.
        time.sleep(5)
        assert set(ours(MISSING)) == {"envfrom"}
        assert set(ours(PRESSURE)) == {"pressure"}
        assert [a for a in firing(url) if a.get("pod") == "healthy"] == []
