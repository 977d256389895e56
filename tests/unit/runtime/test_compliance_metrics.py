"""The watcher's Prometheus collector, read back through the text exposition format."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from unit_helpers import Clock, make_pod, observe, policy

from gomemlimit_operator import __version__
from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView
from gomemlimit_operator.core.records import PodStore
from gomemlimit_operator.runtime.compliance_metrics import WatcherCollector, register_collector
from gomemlimit_operator.runtime.health import metrics_server

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CLUSTER = "ClusterGoMemPolicy/all"


def scrape(registry: CollectorRegistry) -> tuple[Series, dict[str, str]]:
    """(series -> value, family name -> type) from the exposition text."""
    text = generate_latest(registry).decode()
    series: Series = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in series, f"duplicate series {key}"
            series[key] = sample.value
    return series, types


def of(series: Series, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (metric, labels), value in series.items() if metric == name}


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def collector_registry(
    store: PodStore,
    registry: PolicyView,
    *,
    noncompliant_info: bool = True,
    is_active: Callable[[], bool] = lambda: True,
) -> CollectorRegistry:
    prometheus = CollectorRegistry()
    register_collector(
        store,
        registry,
        noncompliant_info=noncompliant_info,
        is_active=is_active,
        prometheus_registry=prometheus,
    )
    return prometheus


def test_container_gauge_and_info_series(store: PodStore, registry: PolicyView) -> None:
    observe(store, make_pod("ok", "shop", gomemlimit="921MiB"))
    observe(store, make_pod("crash", "shop", gomemlimit="512Mi", sidecar=True))
    observe(store, make_pod("big", "web", gomemlimit="2GiB"))
    series, types = scrape(collector_registry(store, registry))

    assert of(series, "gomemlimit_containers") == {
        labels(namespace="shop", policy=CLUSTER, state="compliant"): 1,
        labels(namespace="shop", policy=CLUSTER, state="invalid"): 1,
        labels(namespace="shop", policy=CLUSTER, state="missing"): 1,  # the sidecar
        labels(namespace="web", policy=CLUSTER, state="exceeds_limit"): 1,
    }
    info = labels(namespace="shop", pod="crash", container="app", policy=CLUSTER, state="invalid")
    assert of(series, "gomemlimit_noncompliant_container_info") == {
        info: 1,
        labels(
            namespace="shop", pod="crash", container="proxy", policy=CLUSTER, state="missing"
        ): 1,
        labels(
            namespace="web", pod="big", container="app", policy=CLUSTER, state="exceeds_limit"
        ): 1,
    }
    assert of(series, "gomemlimit_watched_pods") == {(): 3}
    assert types["gomemlimit_containers"] == "gauge"
    assert types["gomemlimit_noncompliant_container_info"] == "gauge"


def test_deleted_pods_vanish_at_the_next_scrape(store: PodStore, registry: PolicyView) -> None:
    prometheus = collector_registry(store, registry)
    observe(store, make_pod("crash", "shop", gomemlimit="512Mi"))
    observe(store, make_pod("fine", "other"))
    series, _ = scrape(prometheus)
    assert len(of(series, "gomemlimit_noncompliant_container_info")) == 2
    store.forget("uid-shop-crash")
    series, _ = scrape(prometheus)
    assert of(series, "gomemlimit_containers") == {
        labels(namespace="other", policy=CLUSTER, state="missing"): 1
    }
    assert of(series, "gomemlimit_noncompliant_container_info") == {
        labels(namespace="other", pod="fine", container="app", policy=CLUSTER, state="missing"): 1
    }


def test_unmanaged_containers_have_an_empty_policy_label(
    store: PodStore, registry: PolicyView
) -> None:
    registry.remove_policy(PolicyKey("ClusterGoMemPolicy", None, "all"))
    observe(store, make_pod("a"))
    observe(store, make_pod("b", gomemlimit="1G"))
    series, _ = scrape(collector_registry(store, registry))
    # Exposed as policy=""; the Prometheus server stores an empty label as no label.
    assert of(series, "gomemlimit_containers") == {
        labels(namespace="default", policy="", state="unmanaged"): 1,
        labels(namespace="default", policy="", state="invalid"): 1,
    }
    assert of(series, "gomemlimit_noncompliant_container_info") == {
        labels(namespace="default", pod="b", container="app", policy="", state="invalid"): 1
    }


def test_the_info_series_can_be_turned_off(store: PodStore, registry: PolicyView) -> None:
    observe(store, make_pod("crash", gomemlimit="512Mi"))
    series, types = scrape(collector_registry(store, registry, noncompliant_info=False))
    assert "gomemlimit_noncompliant_container_info" not in types
    assert of(series, "gomemlimit_containers") == {
        labels(namespace="default", policy=CLUSTER, state="invalid"): 1
    }


def test_policies_by_kind_and_readiness(store: PodStore, registry: PolicyView) -> None:
    registry.set_policy(policy("team", namespace="shop"))
    registry.set_policy(policy("other", namespace="shop"))
    registry.set_invalid(PolicyKey("GoMemPolicy", "web", "bad"), "spec.ratio: must be < 1")
    series, _ = scrape(collector_registry(store, registry))
    assert of(series, "gomemlimit_policies") == {
        labels(kind="GoMemPolicy", ready="true"): 2,
        labels(kind="GoMemPolicy", ready="false"): 1,
        labels(kind="ClusterGoMemPolicy", ready="true"): 1,
        labels(kind="ClusterGoMemPolicy", ready="false"): 0,
    }


def test_process_series(store: PodStore, registry: PolicyView, clock: Clock) -> None:
    prometheus = collector_registry(store, registry)
    series, types = scrape(prometheus)
    assert of(series, "gomemlimit_build_info") == {labels(version=__version__): 1}
    assert of(series, "gomemlimit_last_evaluation_timestamp_seconds") == {(): 0}
    assert of(series, "gomemlimit_leader") == {(): 1}
    assert of(series, "gomemlimit_watcher_synced") == {(): 0}
    assert of(series, "gomemlimit_policy_status_writes_total") == {(): 0}
    assert types["gomemlimit_watch_events"] == "counter"
    assert of(series, "gomemlimit_watch_events_total")[labels(type="added")] == 0

    store.count_event("added")
    observe(store, make_pod("a"))
    clock.now += 15
    store.invalidate()
    store.reevaluate_pending()
    series, _ = scrape(prometheus)
    assert of(series, "gomemlimit_last_evaluation_timestamp_seconds") == {(): clock.now}
    assert of(series, "gomemlimit_watcher_synced") == {(): 1}
    assert of(series, "gomemlimit_watch_events_total")[labels(type="added")] == 1
    assert of(series, "gomemlimit_reevaluated_pods_total") == {(): 1}


def test_a_follower_exports_no_cluster_state(store: PodStore, registry: PolicyView) -> None:
    active = True
    prometheus = collector_registry(store, registry, is_active=lambda: active)
    observe(store, make_pod("crash", gomemlimit="512Mi"))
    series, _ = scrape(prometheus)
    assert of(series, "gomemlimit_containers")
    active = False
    series, types = scrape(prometheus)
    for name in (
        "gomemlimit_containers",
        "gomemlimit_noncompliant_container_info",
        "gomemlimit_policies",
        "gomemlimit_watched_pods",
    ):
        assert name not in types
    assert of(series, "gomemlimit_leader") == {(): 0}
    assert of(series, "gomemlimit_build_info") == {labels(version=__version__): 1}


def test_registering_does_not_collect(store: PodStore, registry: PolicyView) -> None:
    calls = []

    class Counting(WatcherCollector):
        def collect(self):  # type: ignore[no-untyped-def]
            calls.append(1)
            return super().collect()

    prometheus = CollectorRegistry(auto_describe=True)
    prometheus.register(Counting(store, registry))
    assert calls == []
    with pytest.raises(ValueError, match="Duplicated"):
        prometheus.register(WatcherCollector(store, registry))
    scrape(prometheus)
    assert calls == [1]


def test_status_writes_of_this_replica_are_counted(store: PodStore, registry: PolicyView) -> None:
    writes = 0
    prometheus = CollectorRegistry()
    register_collector(
        store, registry, status_writes=lambda: writes, prometheus_registry=prometheus
    )
    assert prometheus.get_sample_value("gomemlimit_policy_status_writes_total") == 0
    writes = 3
    assert prometheus.get_sample_value("gomemlimit_policy_status_writes_total") == 3


def test_the_metrics_server_exports_no_created_series() -> None:
    prometheus = CollectorRegistry()
    counter = Counter("e2e_things", "Things.", registry=prometheus)
    counter.inc()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with metrics_server("127.0.0.1", port, prometheus), urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    assert "e2e_things_total 1.0" in text
    assert "_created" not in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
