"""The pod watcher's store at cluster scale: memory per pod, initial sync, event-loop stalls,
full-GC pauses, re-evaluation and scrape cost, at 10k, 50k and 150k pods.

Two populations of N pods with two containers each (an app and a sidecar):

* ``deployments``: N/50 workloads of 50 replicas; replicas share labels and container facts,
  as Deployment pods do.
* ``unique``: no two pods alike (a per-pod label, as StatefulSet pods have, and a different
  memory limit per pod, 40,000 distinct): the worst case for sharing.

One pod in 20 (5%) has ``GOMEMLIMIT=512Mi``, which Go rejects: its app container is
noncompliant and has a ``gomemlimit_noncompliant_container_info`` series.

Every (size, population) runs in fresh processes (forked from a forkserver that has only
imported the modules; the tracemalloc measurement in one of its own), so sizes do not
pollute each other. Pod events go through the kopf adapter (``PodWatcher.handle``), bodies
made 500 at a time and dropped, as kopf's paged listing delivers them. Measured:

* **initial sync**: N listing events (kopf's type None) plus the end of the listing (the
  store's ``settle``, which marks it synced); the process's RSS growth over it, per pod;
* the **longest event-loop stall** among the synchronous steps the operator runs on its loop:
  one event (an automatic GC that falls into it included), one re-evaluation chunk, a full
  GC; and a scrape, which runs on the metrics server's thread but holds the GIL;
* **full GC**: ``gc.collect()`` with the store, and again after ``gc.freeze()``. The operator
  freezes what start-up created once it is ready (``loop_monitor.freeze_when``), before most
  of the listing, and does so here too; 10 s after its start-up barrier confirmed the
  listing it freezes again, without collecting first (``runtime.watcher.freeze_records``):
  the first number is a full collection without that freeze, the second every full
  collection after it;
* status-only MODIFIED events, a policy change that re-evaluates every pod (in the watcher's
  chunks), a periodic full pass with nothing changed, a scrape (and one with every pod stale);
* **store memory** with tracemalloc, bodies created and dropped one at a time, with a
  breakdown by source line.

Anchor: a full-object informer costs about 36 KiB per pod in Go (tigera/operator PR #5082).
``python -m bench.bench_records [--quick] [--pods N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest

from bench.shared import REPO, BenchRun
from gomemlimit_operator.core.api import Policy, parse_policy
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.core.records import PodStore
from gomemlimit_operator.runtime.compliance_metrics import register_collector
from gomemlimit_operator.runtime.watcher import PodWatcher

# A forkserver child re-runs ``python -m bench.bench_records``'s main module under another
# name, which runpy warns about; the forkserver imports this module first, so the filter
# holds there.
warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)

GO_INFORMER_BYTES_PER_POD: Final = 36 * 1024
NONCOMPLIANT_SHARE: Final = 20
"""One pod in 20 (5%) has GOMEMLIMIT=512Mi (invalid): in ``deployments`` every 20th
workload, in ``unique`` every 20th pod."""
SIZES: Final = {"small": 10_000, "medium": 50_000, "large": 150_000}
QUICK_SIZES: Final = {"small": 250, "medium": 500, "large": 1_000}
POPULATIONS: Final = ("unique", "deployments")
BATCH: Final = 500
"""Bodies alive at once while feeding events (kopf's paged listing gets 500 at a time)."""
BREAKDOWN_LINES: Final = 16


def containers(workload: int, limit_mi: int, value: str) -> list[dict[str, Any]]:
    """The two containers of a benchmark pod: an ``app`` with a memory limit and
    ``GOMEMLIMIT=value``, and a sidecar (never governed). Also used by bench_kwok."""
    return [
        {
            "name": "app",
            "image": f"registry.invalid/service-{workload}:1.2.3",
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
            "image": "registry.invalid/proxy:1.0",
            "resources": {"limits": {"memory": "128Mi", "cpu": "200m"}},
        },
    ]


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
            "containers": containers(workload, limit_mi, value),
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


def policy(ratio: str) -> Policy:
    return parse_policy(
        {
            "apiVersion": "gomemlimit.io/v1alpha1",
            "kind": "ClusterGoMemPolicy",
            "metadata": {"name": "default"},
            "spec": {"ratio": float(ratio), "containers": ["app"]},
        }
    )


class Clock:
    """The store's monotonic clock, moved by hand: a listing settles when the bench says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh(registry: PolicyView, clock: Callable[[], float] = time.monotonic) -> PodWatcher:
    """A store and its watcher as ``runtime.app.build_reporting`` wires them."""
    store = PodStore(registry, per_namespace_listing=True, clock=clock)
    registry.subscribe(store.policy_changed)
    registry.subscribe_namespaces(store.namespace_changed)
    return PodWatcher(store)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``)."""
    resident = int(Path("/proc/self/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def series_count(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def scrape(prometheus: CollectorRegistry) -> dict[str, Any]:
    """One exposition: best of 3 (ms), its bytes, series and info series."""
    text = generate_latest(prometheus)
    best = min(timed(lambda: generate_latest(prometheus)) for _ in range(3))
    return {
        "ms": best * 1000,
        "bytes": len(text),
        "series": series_count(text),
        "info": text.count(b"gomemlimit_noncompliant_container_info{"),
    }


class GcPauses:
    """Automatic collections while a block runs (``gc.callbacks``): the longest per generation."""

    def __init__(self) -> None:
        self.longest: dict[int, float] = {}
        self.count: dict[int, int] = {}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        generation = info["generation"]
        pause = time.perf_counter() - self._start
        self.longest[generation] = max(self.longest.get(generation, 0.0), pause)
        self.count[generation] = self.count.get(generation, 0) + 1

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def feed(
    watcher: PodWatcher, pods: int, scenario: str, kind: str | None, *, mutate: bool = False
) -> tuple[float, float]:
    """Apply one event per pod, bodies made BATCH at a time; (seconds in handle, longest)."""
    total = longest = 0.0
    handle = watcher.handle
    clock = time.perf_counter
    for start in range(0, pods, BATCH):
        bodies = [make_pod(index, scenario) for index in range(start, min(start + BATCH, pods))]
        if mutate:  # a status-only update: the kubelet reported a new pod IP
            for body in bodies:
                body["status"]["podIP"] = "10.255.255.255"
        batch_start = clock()
        for body in bodies:
            before = clock()
            handle({"type": kind, "object": body})
            step = clock() - before
            if step > longest:
                longest = step
        total += clock() - batch_start
        del bodies
    return total, longest


def chunked(watcher: PodWatcher) -> tuple[float, float, int]:
    """Drain the re-evaluation queue as ``PodWatcher.drain`` does: (seconds, longest chunk,
    chunks)."""
    chunks: list[float] = []
    while True:
        start = time.perf_counter()
        remaining = watcher.store.reevaluate_pending(watcher.chunk)
        chunks.append(time.perf_counter() - start)
        if not remaining:
            return sum(chunks), max(chunks), len(chunks)


def full_gc() -> float:
    """The shortest of three full collections (seconds)."""
    gc.collect()
    return min(timed(gc.collect) for _ in range(3))


def short_path(filename: str) -> str:
    for root in (str(REPO) + "/", "operator/"):
        filename = filename.removeprefix(root)
    return filename


def store_memory(pods: int, scenario: str) -> dict[str, Any]:
    """Bytes the store keeps per pod (tracemalloc), bodies created and dropped one at a time,
    with the source lines that hold them."""
    registry = PolicyView()
    registry.set_policy(policy("0.9"))
    watcher = fresh(registry)
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(pods):
        watcher.handle({"type": None, "object": make_pod(index, scenario)})
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    last = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(watcher.store) == pods
    stats = last.compare_to(first, "lineno")
    del first, last
    breakdown = [
        {
            "where": f"{short_path(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
            "bytes_per_pod": round(stat.size_diff / pods, 1),
            "objects_per_pod": round(stat.count_diff / pods, 2),
        }
        for stat in stats[:BREAKDOWN_LINES]
        if stat.size_diff > 0
    ]
    return {
        "bytes_per_pod": (after - before) / pods,
        "pools": watcher.store.pools(),
        "breakdown": breakdown,
    }


def measure(pods: int, scenario: str) -> dict[str, Any]:
    """Everything for one (size, population); run in a fresh process."""
    gc.collect()
    gc.freeze()  # as the operator does once it is ready (loop_monitor.freeze_when)
    clock = Clock()
    registry = PolicyView()
    registry.set_policy(policy("0.9"))
    watcher = fresh(registry, clock)
    store = watcher.store
    gc.collect()
    rss_before = rss_bytes()
    tracked_before = len(gc.get_objects())  # objects created since the freeze

    with GcPauses() as pauses:
        listing, longest_listed = feed(watcher, pods, scenario, None)
        start = time.perf_counter()
        clock.now += store.settle_seconds  # the listing has been quiet: it settles
        swept = store.settle()
        settle = time.perf_counter() - start
    assert swept == 0
    assert store.synced
    assert len(store) == pods
    gc.collect()
    rss_after = rss_bytes()
    tracked = len(gc.get_objects()) - tracked_before

    collect_ms = full_gc() * 1000
    frozen = gc.get_freeze_count()
    gc.freeze()  # as the operator does once its start-up barrier confirmed the listing
    collect_frozen_ms = full_gc() * 1000

    modified, longest_modified = feed(watcher, pods, scenario, "MODIFIED", mutate=True)
    gc.collect()

    prometheus = CollectorRegistry()
    register_collector(store, registry, prometheus_registry=prometheus)
    normal = scrape(prometheus)
    recount = min(timed(store.recount) for _ in range(3))
    counts = store.counts
    status = min(timed(lambda: counts("ClusterGoMemPolicy/default")) for _ in range(5))

    registry.set_policy(policy("0.8"))  # every injected value becomes stale
    queued = store.pending()
    changed, longest_chunk, chunks = chunked(watcher)
    store.invalidate()
    unchanged, longest_unchanged, _ = chunked(watcher)
    stale = scrape(prometheus)
    assert store.aggregates() == store.recount()

    stalls_ms = {
        "one event (an automatic GC in it included)": max(longest_listed, longest_modified) * 1000,
        "end of the listing (settle)": settle * 1000,
        f"one re-evaluation chunk ({watcher.chunk:,} pods)": max(longest_chunk, longest_unchanged)
        * 1000,
        "the full GC before gc.freeze (once)": collect_ms,
        "a full GC after gc.freeze": collect_frozen_ms,
        "scrape (metrics thread, holds the GIL)": normal["ms"],
    }
    worst = max(stalls_ms, key=lambda step: stalls_ms[step])
    return {
        "rss_bytes_per_pod": (rss_after - rss_before) / pods,
        "initial_sync_seconds": listing + settle,
        "listed_us_per_event": listing / pods * 1e6,
        "longest_stall_ms": stalls_ms[worst],
        "longest_stall_step": worst,
        "stalls_ms": stalls_ms,
        "auto_gc_during_sync": {
            f"gen{generation}": {
                "count": pauses.count[generation],
                "longest_ms": pauses.longest[generation] * 1000,
            }
            for generation in sorted(pauses.count)
        },
        "gc_tracked_objects": tracked,
        "gc_frozen_at_start": frozen,
        "full_gc_ms": collect_ms,
        "full_gc_ms_frozen": collect_frozen_ms,
        "scrape_ms": normal["ms"],
        "scrape_bytes": normal["bytes"],
        "series": normal["series"],
        "noncompliant_info_series": normal["info"],
        "scrape_stale_ms": stale["ms"],
        "scrape_stale_bytes": stale["bytes"],
        "stale_info_series": stale["info"],
        "modified_us_per_event": modified / pods * 1e6,
        "policy_change_pods": queued,
        "policy_change_seconds": changed,
        "policy_change_chunks": chunks,
        "longest_chunk_ms": longest_chunk * 1000,
        "full_pass_unchanged_seconds": unchanged,
        "recount_ms": recount * 1000,
        "status_counts_us": status * 1e6,
    }


MODULE: Final = "bench.bench_records"


def in_child(function: str, pods: int, scenario: str) -> dict[str, Any]:
    """``function(pods, scenario)`` of this module in a fresh process, forked from a server
    that has imported this module only (by its package name, also when it runs as
    ``__main__``)."""
    import importlib

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([MODULE])
    child = getattr(importlib.import_module(MODULE), function)
    with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as executor:
        result: dict[str, Any] = executor.submit(child, pods, scenario).result()
    return result


def measure_all(pods: int, scenario: str) -> dict[str, Any]:
    """:func:`measure` and :func:`store_memory`, each in a process of its own: the first
    leaves its store behind (frozen, with a reference cycle through the policy view's
    listeners), and strings it interned would not count in the second."""
    memory = in_child("store_memory", pods, scenario)
    measured = in_child("measure", pods, scenario)
    return {
        "store_bytes_per_pod": memory["bytes_per_pod"],
        **measured,
        "pools": memory["pools"],
        "store_breakdown": memory["breakdown"],
    }


def freeze_verdict(m: dict[str, Any]) -> str:
    """Whether the operator should freeze after its initial listing, by these numbers."""
    before, after = m["full_gc_ms"], m["full_gc_ms_frozen"]
    if before >= 1.0 and after <= before / 2:
        return (
            f"yes: every later full GC {before:.1f} -> {after:.1f} ms "
            "(the operator does: runtime.watcher.freeze_records)"
        )
    return f"no clear gain here ({before:.1f} -> {after:.1f} ms per full GC)"


def report(label: str, pods: int, scenario: str, m: dict[str, Any]) -> None:
    stall = f"{m['longest_stall_ms']:.0f} ms ({m['longest_stall_step']})"
    rows = [
        ("store memory per pod (tracemalloc)", f"{m['store_bytes_per_pod']:,.0f} B"),
        (
            "  vs a 36 KiB/pod Go informer",
            f"{GO_INFORMER_BYTES_PER_POD / max(m['store_bytes_per_pod'], 1):,.0f}x smaller",
        ),
        ("RSS growth per pod", f"{m['rss_bytes_per_pod']:,.0f} B"),
        (
            "initial sync (listing + settle)",
            f"{m['initial_sync_seconds']:.2f} s ({m['listed_us_per_event']:.0f} us/event)",
        ),
        ("longest event-loop stall", stall),
        ("full GC / after gc.freeze()", f"{m['full_gc_ms']:.1f} / {m['full_gc_ms_frozen']:.1f} ms"),
        ("  objects the GC tracks for the store", f"{m['gc_tracked_objects']:,}"),
        ("  gc.freeze() after the initial listing?", freeze_verdict(m)),
        (
            f"scrape, {100 // NONCOMPLIANT_SHARE}% noncompliant",
            f"{m['scrape_ms']:.0f} ms, {m['scrape_bytes'] / 1024:,.0f} KiB, {m['series']:,} "
            f"series ({m['noncompliant_info_series']:,} info)",
        ),
        ("status-only MODIFIED", f"{m['modified_us_per_event']:.0f} us/event"),
        (
            f"policy change: re-evaluate {m['policy_change_pods']:,}",
            f"{m['policy_change_seconds']:.2f} s, longest chunk {m['longest_chunk_ms']:.0f} ms",
        ),
        ("full pass, nothing changed", f"{m['full_pass_unchanged_seconds']:.3f} s"),
        (
            "scrape, every pod stale",
            f"{m['scrape_stale_ms']:.0f} ms, {m['scrape_stale_bytes'] / 1024:,.0f} KiB, "
            f"{m['stale_info_series']:,} info",
        ),
        ("recount from the records instead", f"{m['recount_ms']:.0f} ms"),
    ]
    print(f"--- {label}: {pods:,} pods, {scenario}", flush=True)
    for name, value in rows:
        print(f"  {name:<40} {value}", flush=True)


def print_breakdown(pods: int, m: dict[str, Any]) -> None:
    print(f"  where the store's bytes are ({pods:,} pods; per pod):")
    for line in m["store_breakdown"]:
        print(
            f"    {line['bytes_per_pod']:7.1f} B {line['objects_per_pod']:5.2f} objects  "
            f"{line['where']}"
        )


def collect(run: BenchRun, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    chosen = sizes or (QUICK_SIZES if run.quick else SIZES)
    results: dict[str, dict[str, Any]] = {}
    for label, pods in chosen.items():
        entry: dict[str, Any] = {"pods": pods}
        for scenario in POPULATIONS:
            measured = measure_all(pods, scenario)
            entry[scenario] = measured
            report(label, pods, scenario, measured)
        results[label] = entry
    largest = max(chosen, key=lambda label: chosen[label])
    print_breakdown(chosen[largest], results[largest]["unique"])
    return {"sizes": results, "noncompliant_share": 1 / NONCOMPLIANT_SHARE}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_records")
    parser.add_argument("--quick", action="store_true", help="250, 500 and 1,000 pods")
    parser.add_argument("--pods", type=int, help="one size of this many pods instead")
    args, _ = parser.parse_known_args(argv)
    began = time.monotonic()
    with BenchRun(quick=args.quick) as run:
        result = collect(run, {"custom": args.pods} if args.pods else None)
    print(json.dumps(result, indent=2))
    print(f"  ({time.monotonic() - began:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
