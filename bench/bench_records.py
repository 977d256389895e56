"""The pod watcher's store at cluster scale: memory per pod, event, re-evaluation and scrape cost.

Two populations of N pods with two containers each (an app and a sidecar):

* ``deployments``: N/50 workloads of 50 replicas; replicas share labels and container facts,
  as Deployment pods do.
* ``unique``: no two pods alike (a per-pod label, as StatefulSet pods have, and a different
  memory limit per pod, 40,000 distinct): the worst case for sharing.

Measured: memory the store keeps per pod (tracemalloc, pod bodies created and dropped one
by one as a watch would), applying N ADDED events through the kopf adapter, N status-only
MODIFIED events, re-evaluating every pod after a policy change and in a periodic full pass
with nothing changed, a Prometheus scrape, and the alternative of recounting the aggregates
from the records at every scrape instead of keeping them incrementally.
Anchor: a full-object informer costs about 36 KiB per pod in Go (tigera/operator PR #5082).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from gomemlimit_operator.core.api import parse_policy
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.core.records import PodStore
from gomemlimit_operator.runtime.compliance_metrics import register_collector
from gomemlimit_operator.runtime.watcher import PodWatcher

GO_INFORMER_BYTES_PER_POD = 36 * 1024
NONCOMPLIANT_SHARE = 20  # one pod in 20 has GOMEMLIMIT=512Mi (invalid)


def make_pod(index: int, scenario: str) -> dict[str, Any]:
    """A pod body roughly as the API server sends it (status included)."""
    if scenario == "deployments":
        workload = index // 50
        labels = {
            "app.kubernetes.io/name": f"service-{workload}",
            "app.kubernetes.io/part-of": f"team-{workload % 40}",
            "pod-template-hash": f"{workload * 7919 % 10**10:010d}"[:10],
        }
        limit_mi = 256 * (1 + workload % 8)
        name = f"service-{workload}-{labels['pod-template-hash']}-{index % 50:05d}"
        bad = workload % NONCOMPLIANT_SHARE == 0
    else:
        workload = index
        labels = {
            "app.kubernetes.io/name": f"db-{index // 3}",
            "statefulset.kubernetes.io/pod-name": f"db-{index // 3}-{index % 3}",
            "apps.kubernetes.io/pod-index": str(index % 3),
        }
        limit_mi = 256 + index % 40000
        name = f"db-{index // 3}-{index % 3}"
        bad = index % NONCOMPLIANT_SHARE == 0
    value = "512Mi" if bad else f"{limit_mi * 9 // 10}MiB"
    namespace = f"ns-{workload % 200}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"{index:08x}-0000-4000-8000-{index:012x}",
            "resourceVersion": str(100000 + index),
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "labels": labels,
            "annotations": {
                "gomemlimit.io/injected": json.dumps({"app": {"GOMEMLIMIT": value}}),
                "gomemlimit.io/policy": "ClusterGoMemPolicy/default",
                "kubectl.kubernetes.io/restartedAt": "2026-11-29T09:00:00Z",
            },
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name[:-6], "uid": "x"}
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": f"registry.example.com/service-{workload}:1.2.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "GOMEMLIMIT", "value": value},
                    ],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": f"{limit_mi}Mi"},
                        "limits": {"memory": f"{limit_mi}Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                },
                {
                    "name": "proxy",
                    "image": "registry.example.com/proxy:1.0",
                    "resources": {"limits": {"memory": "128Mi", "cpu": "200m"}},
                },
            ],
            "nodeName": f"node-{index % 300}",
            "serviceAccountName": "default",
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "app", "ready": True, "restartCount": 0},
                {"name": "proxy", "ready": True, "restartCount": 0},
            ],
        },
    }


def policy(ratio: str) -> Any:
    return parse_policy(
        {
            "apiVersion": "gomemlimit.io/v1alpha1",
            "kind": "ClusterGoMemPolicy",
            "metadata": {"name": "default"},
            "spec": {"ratio": float(ratio), "containers": ["app"]},
        }
    )


def fresh(registry: PolicyView) -> tuple[PodStore, PodWatcher]:
    store = PodStore(registry, per_namespace_listing=True)
    registry.subscribe(store.policy_changed)
    return store, PodWatcher(store)


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scrape(prometheus: CollectorRegistry) -> tuple[float, int, int]:
    """(best of 3 seconds, bytes, info series) of one exposition."""
    text = generate_latest(prometheus)
    best = min(timed(lambda: generate_latest(prometheus)) for _ in range(3))
    return best, len(text), text.count(b"gomemlimit_noncompliant_container_info{")


def events(kind: str | None, bodies: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for body in bodies:
        yield {"type": kind, "object": body}


def measure_memory(pods: int, scenario: str) -> tuple[float, int]:
    """(bytes kept per pod, distinct facts) with bodies created and dropped one at a time."""
    registry = PolicyView()
    registry.set_policy(policy("0.9"))
    store, watcher = fresh(registry)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(pods):
        watcher.handle({"type": "ADDED", "object": make_pod(index, scenario)})
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(store) == pods
    return (after - before) / pods, store.interned()[1]


def run_scenario(pods: int, scenario: str) -> None:
    per_pod, distinct = measure_memory(pods, scenario)
    registry = PolicyView()
    registry.set_policy(policy("0.9"))
    store, watcher = fresh(registry)
    bodies = [make_pod(index, scenario) for index in range(pods)]

    added = timed(lambda: [watcher.handle(e) for e in events("ADDED", bodies)])
    for body in bodies:
        body["status"]["podIP"] = "10.255.255.255"
    modified = timed(lambda: [watcher.handle(e) for e in events("MODIFIED", bodies)])
    bodies.clear()

    prometheus = CollectorRegistry()
    register_collector(store, registry, prometheus_registry=prometheus)
    scrape_normal, size_normal, info_normal = scrape(prometheus)
    recount = min(timed(store.recount) for _ in range(3))
    status = min(timed(lambda: store.counts("ClusterGoMemPolicy/default")) for _ in range(5))

    full_gc = min(timed(gc.collect) for _ in range(3))  # a pause the event loop also takes

    registry.set_policy(policy("0.8"))  # every injected value becomes stale
    queued = store.pending()
    chunks = []
    while True:  # as PodWatcher.drain does, yielding to the event loop between chunks
        start = time.perf_counter()
        remaining = store.reevaluate_pending(watcher.chunk)
        chunks.append(time.perf_counter() - start)
        if not remaining:
            break
    changed = sum(chunks)
    store.invalidate()
    unchanged = timed(store.reevaluate_pending)
    scrape_stale, size_stale, info_stale = scrape(prometheus)
    assert store.aggregates() == store.recount()

    rows = [
        ("store memory per pod", f"{per_pod:,.0f} B"),
        ("  vs 36 KiB/pod Go informer", f"{GO_INFORMER_BYTES_PER_POD / per_pod:,.0f}x smaller"),
        ("  distinct pod facts kept", f"{distinct:,}"),
        (f"{pods:,} ADDED events", f"{added:.2f} s ({added / pods * 1e6:.0f} us/event)"),
        (
            f"{pods:,} status-only MODIFIED",
            f"{modified:.2f} s ({modified / pods * 1e6:.0f} us/event)",
        ),
        (f"policy change: re-evaluate {queued:,}", f"{changed:.2f} s"),
        (
            f"  longest chunk of {watcher.chunk:,} (loop blocked)",
            f"{max(chunks) * 1000:.0f} ms",
        ),
        ("full pass, nothing changed", f"{unchanged:.3f} s"),
        ("gc.collect() with the store (full GC)", f"{full_gc * 1000:.0f} ms"),
        (
            f"scrape, {100 // NONCOMPLIANT_SHARE}% noncompliant",
            f"{scrape_normal * 1000:.0f} ms, {size_normal / 1024:,.0f} KiB, "
            f"{info_normal:,} info series",
        ),
        (
            "scrape, all stale after the change",
            f"{scrape_stale * 1000:.0f} ms, {size_stale / 1024:,.0f} KiB, "
            f"{info_stale:,} info series",
        ),
        ("recount from records instead", f"{recount * 1000:.0f} ms"),
        ("counts(policy) for status", f"{status * 1e6:.1f} us"),
    ]
    print(f"--- {scenario}: {pods:,} pods, 2 containers each")
    for label, value in rows:
        print(f"  {label:<42} {value}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--pods", type=int, default=50_000)
    args, _ = parser.parse_known_args(argv)
    for scenario in ("deployments", "unique"):
        run_scenario(args.pods, scenario)
