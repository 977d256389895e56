"""Prometheus series of the pod compliance watcher, computed at scrape time.

A custom collector reads the record store's aggregates at each scrape, so the series of a
deleted pod, an emptied namespace or a removed policy are simply absent from the next scrape
(labelled gauges would keep them until someone removed them). A scrape costs O(series): the
store keeps its counts incrementally.

Series (documented with example queries in docs/metrics.md):

* ``gomemlimit_containers{namespace,policy,state}``: containers per state. Every container of
  every watched pod is counted once; ``policy=""`` when no policy governs it (state
  ``unmanaged``, or ``invalid``/``exceeds_limit``, which need no policy to be wrong).
* ``gomemlimit_noncompliant_container_info{namespace,pod,container,policy,state}`` 1: one per
  container in a state that needs action (:data:`~.engine.NONCOMPLIANT_STATES`). Its size
  follows the problem, not the cluster; ``--no-noncompliant-info`` turns it off.
* ``gomemlimit_policies{kind,ready}``: valid (ready="true") and invalid policies per kind.
* ``gomemlimit_watched_pods``: pods in the store.
* ``gomemlimit_watcher_synced``: 1 once the first pod listing finished.

Those come from cluster state. Every replica watches pods and keeps the same records, but
only the leader (see :mod:`leader`) exports them, so that cluster state is exported once;
the other replicas omit them. Every replica exports:

* ``gomemlimit_leader``: 1 on the replica that holds the lease (always 1 without leader
  election), else 0.
* ``gomemlimit_last_evaluation_timestamp_seconds``: end of the last full re-evaluation of
  every stored pod (0 before the first). Stops advancing when the watcher stalls.
* ``gomemlimit_watch_events_total{type}``: pod watch events handled, by type.
* ``gomemlimit_reevaluated_pods_total``: pods re-evaluated from their records (policy
  and namespace label changes, full passes).
* ``gomemlimit_policy_status_writes_total``: policy status writes this replica made.
* ``gomemlimit_build_info{version}`` 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gomemlimit_operator import __version__
from gomemlimit_operator.core.api import POLICY_KINDS
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.core.records import PodStore

__all__ = ["EVENT_TYPES", "WatcherCollector", "register_collector"]

EVENT_TYPES: Final = (
    "listed",
    "added",
    "modified",
    "deleted",
    "ignored",
    "too_large",
    "error",
)


class WatcherCollector:
    """A prometheus_client collector over a :class:`PodStore` and the policy registry."""

    def __init__(
        self,
        store: PodStore,
        registry: PolicyView,
        *,
        noncompliant_info: bool = True,
        is_active: Callable[[], bool] = lambda: True,
        status_writes: Callable[[], int] = lambda: 0,
        version: str = __version__,
    ) -> None:
        self.store = store
        self.registry = registry
        self.noncompliant_info = noncompliant_info
        self.is_active = is_active
        self.status_writes = status_writes
        self.version = version

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so that registering does not run a collection."""
        return self._families(active=True)

    def _families(self, *, active: bool) -> list[Metric]:
        families: list[Metric] = [
            GaugeMetricFamily(
                "gomemlimit_build_info", "The operator's version; always 1.", labels=["version"]
            ),
            GaugeMetricFamily(
                "gomemlimit_leader",
                "1 on the replica that exports cluster state and writes policy status, else 0.",
            ),
            GaugeMetricFamily(
                "gomemlimit_last_evaluation_timestamp_seconds",
                "Unix time at which a re-evaluation of every watched pod last finished; "
                "0 before the first.",
            ),
            CounterMetricFamily(
                "gomemlimit_watch_events",
                "Pod watch events handled, by type (listed: from a (re-)listing).",
                labels=["type"],
            ),
            CounterMetricFamily(
                "gomemlimit_reevaluated_pods",
                "Pods re-evaluated from their records after policy or namespace label changes "
                "and in full passes.",
            ),
            CounterMetricFamily(
                "gomemlimit_policy_status_writes",
                "Policy status writes made by this replica.",
            ),
        ]
        if active:
            families += [
                GaugeMetricFamily(
                    "gomemlimit_containers",
                    "Containers of watched pods, by namespace, governing policy and state.",
                    labels=["namespace", "policy", "state"],
                ),
                GaugeMetricFamily(
                    "gomemlimit_watched_pods", "Pods the compliance watcher keeps a record of."
                ),
                GaugeMetricFamily(
                    "gomemlimit_watcher_synced", "1 once the first pod listing finished, else 0."
                ),
                GaugeMetricFamily(
                    "gomemlimit_policies",
                    "GoMemPolicy and ClusterGoMemPolicy objects, by kind and validity.",
                    labels=["kind", "ready"],
                ),
            ]
            if self.noncompliant_info:
                families.append(
                    GaugeMetricFamily(
                        "gomemlimit_noncompliant_container_info",
                        "1 for each container in a state that needs action.",
                        labels=["namespace", "pod", "container", "policy", "state"],
                    )
                )
        return families

    def collect(self) -> Iterable[Metric]:
        active = self.is_active()
        snapshot = self.store.snapshot(noncompliant=active and self.noncompliant_info)
        families = {family.name: family for family in self._families(active=active)}

        def gauge(name: str) -> GaugeMetricFamily:
            family = families[name]
            assert isinstance(family, GaugeMetricFamily)
            return family

        gauge("gomemlimit_build_info").add_metric([self.version], 1)
        gauge("gomemlimit_leader").add_metric([], 1 if active else 0)
        gauge("gomemlimit_last_evaluation_timestamp_seconds").add_metric(
            [], snapshot.last_full_evaluation or 0.0
        )
        events = families["gomemlimit_watch_events"]
        assert isinstance(events, CounterMetricFamily)
        for kind in sorted({*EVENT_TYPES, *snapshot.events}):
            events.add_metric([kind], snapshot.events.get(kind, 0))
        reevaluated = families["gomemlimit_reevaluated_pods"]
        assert isinstance(reevaluated, CounterMetricFamily)
        reevaluated.add_metric([], snapshot.reevaluated_pods)
        writes = families["gomemlimit_policy_status_writes"]
        assert isinstance(writes, CounterMetricFamily)
        writes.add_metric([], self.status_writes())

        if active:
            containers = gauge("gomemlimit_containers")
            for (namespace, policy, state), count in sorted(snapshot.containers.items()):
                containers.add_metric([namespace, policy, state.value], count)
            gauge("gomemlimit_watched_pods").add_metric([], snapshot.pods)
            gauge("gomemlimit_watcher_synced").add_metric([], 1 if snapshot.synced else 0)
            policies = gauge("gomemlimit_policies")
            valid = [policy.kind for policy in self.registry.policies()]
            invalid = [key.kind for key in self.registry.invalid()]
            for kind in POLICY_KINDS:
                policies.add_metric([kind, "true"], valid.count(kind))
                policies.add_metric([kind, "false"], invalid.count(kind))
            if self.noncompliant_info:
                info = gauge("gomemlimit_noncompliant_container_info")
                for item in snapshot.noncompliant:
                    info.add_metric(
                        [item.namespace, item.pod, item.container, item.policy, item.state.value],
                        1,
                    )
        return list(families.values())


def register_collector(
    store: PodStore,
    registry: PolicyView,
    *,
    noncompliant_info: bool = True,
    is_active: Callable[[], bool] = lambda: True,
    status_writes: Callable[[], int] = lambda: 0,
    prometheus_registry: CollectorRegistry,
) -> WatcherCollector:
    """Create the collector and register it on ``prometheus_registry``."""
    collector = WatcherCollector(
        store,
        registry,
        noncompliant_info=noncompliant_info,
        is_active=is_active,
        status_writes=status_writes,
    )
    prometheus_registry.register(collector)
    return collector
