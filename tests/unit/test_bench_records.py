"""The scale benchmarks' pure parts: the populations they feed, their counting and parsing.
Nothing here runs a benchmark or looks at a time."""

from __future__ import annotations

from bench import bench_kwok, bench_records
from prometheus_client import CollectorRegistry, generate_latest

from gomemlimit_operator.core.engine import NONCOMPLIANT_STATES, evaluate_pod
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.compliance_metrics import register_collector


def test_both_populations_are_five_percent_noncompliant() -> None:
    policy = bench_records.policy("0.9")
    for scenario in bench_records.POPULATIONS:
        bad = 0
        for index in range(2_000):
            pod = bench_records.make_pod(index, scenario)
            states = [r.state for r in evaluate_pod(pod["metadata"], pod["spec"], policy)]
            bad += any(state in NONCOMPLIANT_STATES for state in states)
        assert bad == 2_000 // bench_records.NONCOMPLIANT_SHARE == 100, scenario


def test_unique_pods_share_no_labels_and_deployment_replicas_do() -> None:
    unique = {
        tuple(sorted(bench_records.make_pod(i, "unique")["metadata"]["labels"].items()))
        for i in range(300)
    }
    assert len(unique) == 300
    replicas = {
        tuple(sorted(bench_records.make_pod(i, "deployments")["metadata"]["labels"].items()))
        for i in range(300)
    }
    assert len(replicas) == 300 // 50


def test_the_same_keys_in_quick_and_full_runs() -> None:
    assert (
        set(bench_records.QUICK_SIZES)
        == set(bench_records.SIZES)
        == {
            "small",
            "medium",
            "large",
        }
    )
    assert bench_records.SIZES == {"small": 10_000, "medium": 50_000, "large": 150_000}


def test_series_count_and_info_series_of_a_scrape() -> None:
    registry = PolicyView()
    registry.set_policy(bench_records.policy("0.9"))
    watcher = bench_records.fresh(registry)
    for index in range(40):
        watcher.handle({"type": "ADDED", "object": bench_records.make_pod(index, "unique")})
    prometheus = CollectorRegistry()
    register_collector(watcher.store, registry, prometheus_registry=prometheus)
    text = generate_latest(prometheus)
    assert text.count(b"gomemlimit_noncompliant_container_info{") == 2
    lines = [line for line in text.decode().splitlines() if line and not line.startswith("#")]
    assert bench_records.series_count(text) == len(lines)
    assert bench_kwok.value(text, "gomemlimit_watched_pods") == 40


def test_kwok_pods_nodes_and_metrics_parsing() -> None:
    pods = [bench_kwok.pod(index, "kwok-bench-0") for index in range(200)]
    assert len({p["metadata"]["name"] for p in pods}) == 200
    values = [
        next(e["value"] for e in p["spec"]["containers"][0]["env"] if e["name"] == "GOMEMLIMIT")
        for p in pods
    ]
    assert values.count("512Mi") == 200 // bench_kwok.NONCOMPLIANT_SHARE
    assert all(p["spec"]["nodeName"] == "kwok-bench-0" for p in pods)
    assert [c["name"] for c in pods[0]["spec"]["containers"]] == ["app", "proxy"]
    node = bench_kwok.node("kwok-bench-3", "v1.35.4")
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["capacity"]["pods"] == str(bench_kwok.PODS_PER_NODE)

    body = (
        b"# HELP gomemlimit_containers x\n"
        b'gomemlimit_containers{namespace="gomemlimit-bench-kwok-0",policy="p",state="compliant"}'
        b" 38.0\n"
        b'gomemlimit_containers{namespace="gomemlimit-bench-kwok-1",policy="",state="unmanaged"}'
        b" 40.0\n"
        b'gomemlimit_containers{namespace="other",policy="",state="unmanaged"} 5.0\n'
        b"gomemlimit_watcher_synced 1.0\n"
    )
    assert bench_kwok.bench_containers(body) == 78
    assert bench_kwok.value(body, "gomemlimit_watcher_synced") == 1
    assert bench_kwok.value(body, "missing") is None
    assert len(bench_kwok.samples(body)) == 4


def test_the_freeze_verdict() -> None:
    assert bench_records.freeze_verdict({"full_gc_ms": 73.1, "full_gc_ms_frozen": 0.0}).startswith(
        "yes"
    )
    assert bench_records.freeze_verdict({"full_gc_ms": 0.1, "full_gc_ms_frozen": 0.0}).startswith(
        "no"
    )
