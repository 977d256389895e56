"""The kopf adapter of the pod watcher, with synthetic kopf events and no cluster."""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
from types import SimpleNamespace
from typing import Any

import kopf
import kubernetes
import pytest
from prometheus_client import CollectorRegistry
from unit_helpers import Clock, make_pod, policy

from gomemlimit_operator.core.api import ContainerCounts
from gomemlimit_operator.core.engine import State
from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView
from gomemlimit_operator.core.records import PodStore
from gomemlimit_operator.runtime.app import assert_pods_read_only, build_reporting
from gomemlimit_operator.runtime.watcher import (
    PodWatcher,
    confirm_listing,
    freeze_records,
    register,
)

CLUSTER = "ClusterGoMemPolicy/all"


def event(kind: str | None, pod: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": copy.deepcopy(pod)}


def states(store: PodStore) -> dict[tuple[str, str, State], int]:
    assert store.aggregates() == store.recount()
    return store.aggregates().containers


def test_events_add_modify_and_delete(store: PodStore) -> None:
    watcher = PodWatcher(store)
    pod = make_pod("a")
    watcher.handle(event("ADDED", pod))
    watcher.handle(event("MODIFIED", pod))
    assert states(store) == {("default", CLUSTER, State.MISSING): 1}
    watcher.handle(event("MODIFIED", make_pod("a", gomemlimit="512Mi")))
    assert states(store) == {("default", CLUSTER, State.INVALID): 1}
    watcher.handle(event("DELETED", make_pod("a", gomemlimit="512Mi")))
    assert states(store) == {}
    assert len(store) == 0
    assert store.snapshot().events == {"added": 1, "modified": 2, "deleted": 1}


def test_listing_events_count_as_listed_and_settle(store: PodStore, clock: Clock) -> None:
    watcher = PodWatcher(store)
    watcher.handle(event(None, make_pod("a")))
    assert store.counts(CLUSTER) is None  # the listing may not be complete
    clock.now += 5
    watcher.step(clock.now)
    assert store.counts(CLUSTER) == (1, 1, ContainerCounts(missing=1))
    assert store.snapshot().events == {"listed": 1}


def test_finished_pods_are_forgotten(store: PodStore) -> None:
    watcher = PodWatcher(store)
    pod = make_pod("job")
    watcher.handle(event("ADDED", pod))
    for phase in ("Running", "Pending"):
        pod["status"] = {"phase": phase}
        watcher.handle(event("MODIFIED", pod))
        assert len(store) == 1
    pod["status"] = {"phase": "Succeeded"}
    watcher.handle(event("MODIFIED", pod))
    assert len(store) == 0
    pod["status"] = {"phase": "Failed"}
    watcher.handle(event(None, pod))
    assert len(store) == 0


def test_unwatched_namespaces_and_malformed_events_are_ignored(store: PodStore) -> None:
    watcher = PodWatcher(store, watches=lambda namespace: namespace == "team")
    watcher.handle(event("ADDED", make_pod("a", "other")))
    watcher.handle(event("ADDED", make_pod("a", "team")))
    watcher.handle({"type": "ADDED", "object": None})
    watcher.handle({"type": "ADDED", "object": {"metadata": {"name": "no-uid"}}})
    watcher.handle({"type": "ADDED"})
    assert [r.namespace for r in store.records()] == ["team"]
    assert store.snapshot().events == {"ignored": 1, "added": 1}


def test_a_spec_the_engine_cannot_read_is_counted_not_raised(store: PodStore) -> None:
    watcher = PodWatcher(store)
    good = make_pod("a")
    watcher.handle(event("ADDED", good))
    bad = make_pod("a", limit="lots")
    watcher.handle(event("MODIFIED", bad))
    assert len(store) == 0
    assert store.snapshot().events == {"added": 1, "modified": 1, "error": 1}


def test_kube_system_pods_are_recorded(store: PodStore) -> None:
    watcher = PodWatcher(store)
    watcher.handle(event("ADDED", make_pod("coredns", "kube-system")))
    assert states(store) == {("kube-system", CLUSTER, State.MISSING): 1}


def test_policy_change_is_applied_by_the_housekeeping_without_pod_events(
    store: PodStore, registry: PolicyView, clock: Clock
) -> None:
    watcher = PodWatcher(store, chunk=2)
    for index in range(5):
        watcher.handle(event("ADDED", make_pod(f"p{index}", gomemlimit="921MiB", injected=True)))
    assert states(store) == {("default", CLUSTER, State.COMPLIANT): 5}
    registry.set_policy(policy("all", ratio=0.5))
    asyncio.run(watcher.drain())
    assert states(store) == {("default", CLUSTER, State.STALE): 5}
    registry.remove_policy(PolicyKey("ClusterGoMemPolicy", None, "all"))
    asyncio.run(watcher.drain())
    assert states(store) == {("default", "", State.UNMANAGED): 5}


def test_full_passes_need_an_active_synced_replica(store: PodStore, clock: Clock) -> None:
    active = False
    watcher = PodWatcher(store, is_active=lambda: active, full_interval=60)
    watcher.handle(event("ADDED", make_pod("a")))
    assert watcher.step(clock.now) == 0  # not synced yet: no listing finished
    clock.now += 15
    assert watcher.step(clock.now) == 0  # synced, but paused
    active = True
    assert watcher.step(clock.now) == 1
    asyncio.run(watcher.drain())
    assert store.last_full_evaluation == clock.now
    clock.now += 30
    assert watcher.step(clock.now) == 0  # not due yet
    clock.now += 30
    assert watcher.step(clock.now) == 1


def test_the_run_loop_evaluates_in_the_background(store: PodStore, registry: PolicyView) -> None:
    watcher = PodWatcher(store, interval=0.01)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run())
        watcher.handle(event("ADDED", make_pod("a")))
        registry.set_policy(policy("all", containers=["other"]))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if store.pending() == 0:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert states(store) == {("default", "", State.UNMANAGED): 1}


def kopf_pod_handlers(kopf_registry: kopf.OperatorRegistry) -> list[Any]:
    return [
        handler
        for handler in kopf_registry._watching.get_all_handlers()
        if "pods" in (handler.selector.plural, handler.selector.any_name)
    ]


def test_register_adds_one_read_only_event_handler_returning_none(store: PodStore) -> None:
    kopf_registry = kopf.OperatorRegistry()
    watcher = PodWatcher(store)
    register(kopf_registry, watcher)
    assert_pods_read_only(kopf_registry)
    (handler,) = kopf_pod_handlers(kopf_registry)
    assert handler.id == "pod-compliance"
    assert inspect.iscoroutinefunction(handler.fn)
    pod = make_pod("a")
    result = asyncio.run(handler.fn(event=event("ADDED", pod), body=pod, logger=None))
    assert result is None
    assert len(store) == 1


def reporting_config(*, leader_election: bool) -> Any:
    return SimpleNamespace(
        clusterwide=False,
        watches=lambda ns: True,
        noncompliant_info=True,
        status_interval_seconds=5.0,
        leader_election=leader_election,
        leader_election_lease_duration=15,
        leader_election_namespace="x",
        leader_election_identity="replica-a",
    )


def test_build_reporting_wires_store_handler_metrics_and_status_counts() -> None:
    registry = PolicyView()
    registry.set_policy(policy("all"))
    kopf_registry = kopf.OperatorRegistry()
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration())
    prometheus = CollectorRegistry()
    wired = build_reporting(
        reporting_config(leader_election=True),
        api_client,
        registry,
        kopf_registry,
        prometheus,
        list_uids=None,
    )
    elector = wired.elector
    assert elector is not None
    elector._leading, elector._valid_until = True, float("inf")
    assert wired.store.per_namespace_listing
    assert wired.store.quiet_sync  # no barrier: an idle cluster is synced after a while
    assert wired.status_writer.counts_provider == wired.store.counts
    # The status writer, the campaign and the housekeeping; no start-up barrier.
    assert wired.background == (wired.status_writer.run, elector.run, wired.watcher.run)
    assert len(kopf_pod_handlers(kopf_registry)) == 1
    wired.watcher.handle(event("ADDED", make_pod("a")))
    registry.set_policy(policy("all", containers=["none"]))  # the listener is wired
    assert wired.store.pending() == 1
    wired.store.reevaluate_pending()
    registry.set_namespace("default", {"team": "x"})  # so is the namespace listener
    assert wired.store.pending() == 1
    assert prometheus.get_sample_value("gomemlimit_watched_pods") == 1
    wired.status_writer.writes = 2
    assert prometheus.get_sample_value("gomemlimit_policy_status_writes_total") == 2
    elector._leading = False
    assert prometheus.get_sample_value("gomemlimit_leader") == 0
    assert prometheus.get_sample_value("gomemlimit_watched_pods") is None

    again_prometheus = CollectorRegistry()  # each build has its own registry: no clash
    again = build_reporting(
        reporting_config(leader_election=False),
        api_client,
        PolicyView(),
        kopf.OperatorRegistry(),
        again_prometheus,
        list_uids=lambda: set(),
    )
    assert again_prometheus.get_sample_value("gomemlimit_watched_pods") == 0
    assert again.collector is not wired.collector
    assert not again.store.quiet_sync
    # The status writer, the housekeeping and the start-up barrier.
    assert len(again.background) == 3

    async def barrier() -> None:
        await asyncio.wait_for(again.background[2](), timeout=5)

    assert not again.store.synced
    asyncio.run(barrier())  # an empty cluster: synced as soon as the LIST answers
    assert again.store.synced


class Lister:
    """A fake LIST of pod uids: answers from a script, one entry per call."""

    def __init__(self, *answers: set[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> set[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return set(answer)


def test_the_barrier_waits_for_every_listed_pod(store: PodStore) -> None:
    store.quiet_sync = False
    watcher = PodWatcher(store)
    lister = Lister({"uid-default-a", "uid-default-b"})
    frozen: list[bool] = []  # the records' synced state when the barrier froze the GC

    async def scenario() -> None:
        task = asyncio.create_task(
            confirm_listing(
                store,
                lister,
                poll=0.01,
                relist_after=30,
                freeze_after=0,
                freeze=lambda: frozen.append(store.synced),
            )
        )
        watcher.handle(event(None, make_pod("a")))
        await asyncio.sleep(0.05)
        assert not task.done()
        assert not store.synced  # b has not been delivered yet
        assert frozen == []
        watcher.handle(event("DELETED", make_pod("b")))  # an event about b is enough
        await asyncio.wait_for(task, timeout=5)
        await asyncio.sleep(0.01)  # the freeze is scheduled on the loop

    asyncio.run(scenario())
    assert store.synced
    assert lister.calls == 1
    assert frozen == [True]  # once, after the records were synced


def test_the_barrier_drops_pods_a_new_listing_no_longer_has(store: PodStore) -> None:
    # "gone" was deleted between the barrier's LIST and kopf's: no event will ever name it.
    store.quiet_sync = False
    lister = Lister(RuntimeError("HTTP 500"), {"uid-gone", "uid-here"}, {"uid-here", "uid-new"})
    watcher = PodWatcher(store)

    async def scenario() -> None:
        task = asyncio.create_task(
            confirm_listing(
                store,
                lister,
                poll=0.01,
                relist_after=0.05,
                retry=0.01,
                freeze_after=0,
                freeze=lambda: None,
            )
        )
        watcher.handle(event(None, make_pod("here", uid="uid-here")))
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert store.synced
    assert lister.calls == 3  # a failure, then a LIST with "gone", then one without it


def test_the_barrier_does_not_list_again_while_the_watch_delivers(store: PodStore) -> None:
    store.quiet_sync = False
    watcher = PodWatcher(store)
    names = [f"p{index}" for index in range(12)]
    lister = Lister({f"uid-default-{name}" for name in names})

    async def scenario() -> None:
        task = asyncio.create_task(
            confirm_listing(
                store, lister, poll=0.005, relist_after=0.2, freeze_after=0, freeze=lambda: None
            )
        )
        for name in names:  # a listing of 0.6 s: every window of 0.2 s sees progress
            await asyncio.sleep(0.05)
            watcher.handle(event(None, make_pod(name)))
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert store.synced
    assert lister.calls == 1


def test_the_freeze_does_not_collect_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # A full collection with the records in memory is the pause the freeze avoids.
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    freeze_records()
    assert calls == ["freeze"]
