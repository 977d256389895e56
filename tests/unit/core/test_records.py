"""State bookkeeping of the pod watcher: exact counts, moves, deletes, policy changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_helpers import Clock, make_pod, observe, policy

from gomemlimit_operator.core.api import ContainerCounts
from gomemlimit_operator.core.engine import State, evaluate_pod
from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView
from gomemlimit_operator.core.records import (
    NoncompliantContainer,
    PodStore,
    _Pool,
    labels_dict,
    labels_key,
)

MI = 1024 * 1024


def consistent(store: PodStore) -> None:
    """The incremental aggregates equal a recount from the records."""
    assert store.aggregates() == store.recount()


def containers(store: PodStore) -> dict[tuple[str, str, State], int]:
    consistent(store)
    return store.aggregates().containers


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> PolicyView:
    return PolicyView()


@pytest.fixture
def store(registry: PolicyView, clock: Clock) -> Iterator[PodStore]:
    store = PodStore(registry, settle_seconds=5, clock=clock, wall_clock=clock)
    registry.subscribe(store.policy_changed)
    registry.subscribe_namespaces(store.namespace_changed)
    clock.now += 15  # quiet long enough: synced without any listing
    yield store
    consistent(store)


CLUSTER = "ClusterGoMemPolicy/all"


def test_repeated_events_do_not_double_count(
    store: PodStore, registry: PolicyView, clock: Clock
) -> None:
    registry.set_policy(policy("all"))
    pod = make_pod("a", sidecar=True)
    for _ in range(3):
        observe(store, pod)
        observe(store, pod, listing=True)
    clock.now += 5
    assert store.settle() == 0
    assert len(store) == 1
    assert containers(store) == {("default", CLUSTER, State.MISSING): 2}
    assert store.counts(CLUSTER) == (1, 2, ContainerCounts(missing=2))


def test_a_changed_pod_replaces_its_contribution(store: PodStore, registry: PolicyView) -> None:
    registry.set_policy(policy("all"))
    observe(store, make_pod("a"))
    observe(store, make_pod("a", gomemlimit="512Mi"))
    assert containers(store) == {("default", CLUSTER, State.INVALID): 1}
    observe(store, make_pod("a", gomemlimit="921MiB"))
    assert containers(store) == {("default", CLUSTER, State.COMPLIANT): 1}
    assert store.counts(CLUSTER) == (1, 1, ContainerCounts(compliant=1))


def test_delete_removes_every_count_and_is_idempotent(
    store: PodStore, registry: PolicyView
) -> None:
    registry.set_policy(policy("all"))
    observe(store, make_pod("a", sidecar=True))
    observe(store, make_pod("b", gomemlimit="2GiB"))
    assert store.forget("uid-default-a")
    assert containers(store) == {("default", CLUSTER, State.EXCEEDS_LIMIT): 1}
    assert store.counts(CLUSTER) == (1, 1, ContainerCounts(exceeds_limit=1))
    assert store.forget("uid-default-b")
    assert not store.forget("uid-default-b")
    assert not store.forget("never-seen")
    assert containers(store) == {}
    assert store.counts(CLUSTER) == (0, 0, ContainerCounts())
    assert store.snapshot().noncompliant == []
    assert store.interned() == (0, 0)


def test_label_change_moves_a_pod_between_policies(store: PodStore, registry: PolicyView) -> None:
    registry.set_policy(policy("all"))
    team = policy("team", namespace="default", selector={"matchLabels": {"team": "a"}})
    registry.set_policy(team)
    observe(store, make_pod("p", labels={"team": "b"}))
    assert store.counts(team.ref) == (0, 0, ContainerCounts())
    assert store.counts(CLUSTER) == (1, 1, ContainerCounts(missing=1))

    observe(store, make_pod("p", labels={"team": "a"}))
    assert store.counts(team.ref) == (1, 1, ContainerCounts(missing=1))
    assert store.counts(CLUSTER) == (0, 0, ContainerCounts())
    assert containers(store) == {("default", team.ref, State.MISSING): 1}

    observe(store, make_pod("p", labels={}))
    assert store.counts(team.ref) == (0, 0, ContainerCounts())
    assert containers(store) == {("default", CLUSTER, State.MISSING): 1}


def test_same_name_new_uid_is_a_different_pod(store: PodStore, registry: PolicyView) -> None:
    registry.set_policy(policy("all"))
    observe(store, make_pod("web-0", uid="old"))
    observe(store, make_pod("web-0", uid="new"))
    assert containers(store) == {("default", CLUSTER, State.MISSING): 2}
    store.forget("old")  # the old incarnation's DELETED may arrive after the new ADDED
    assert containers(store) == {("default", CLUSTER, State.MISSING): 1}
    record = store.get("new")
    assert record is not None
    assert record.name == "web-0"


def test_policy_create_change_delete_reevaluate_without_pod_events(
    store: PodStore, registry: PolicyView, clock: Clock
) -> None:
    injected = make_pod("injected", gomemlimit="921MiB", injected=True)  # 0.9 of 1Gi
    own = make_pod("own", gomemlimit="921MiB")
    bare = make_pod("bare")
    for pod in (injected, own, bare):
        observe(store, pod)
    assert containers(store) == {("default", "", State.UNMANAGED): 3}

    registry.set_policy(policy("all"))
    assert store.pending() == 3
    assert containers(store) == {("default", "", State.UNMANAGED): 3}  # not yet re-evaluated
    clock.now += 1
    assert store.reevaluate_pending() == 0
    assert store.last_full_evaluation == clock.now
    assert containers(store) == {
        ("default", CLUSTER, State.COMPLIANT): 2,
        ("default", CLUSTER, State.MISSING): 1,
    }

    # A new ratio: the injected value is stale, the user's own value is respected.
    registry.set_policy(policy("all", ratio=0.8))
    store.reevaluate_pending()
    assert containers(store) == {
        ("default", CLUSTER, State.STALE): 1,
        ("default", CLUSTER, State.COMPLIANT): 1,
        ("default", CLUSTER, State.MISSING): 1,
    }
    assert store.counts(CLUSTER) == (3, 3, ContainerCounts(stale=1, compliant=1, missing=1))
    # onExisting: override makes the user's value stale too.
    registry.set_policy(policy("all", ratio=0.8, onExisting="override"))
    store.reevaluate_pending()
    assert store.counts(CLUSTER) == (3, 3, ContainerCounts(stale=2, missing=1))

    registry.remove_policy(PolicyKey("ClusterGoMemPolicy", None, "all"))
    store.reevaluate_pending()
    assert containers(store) == {("default", "", State.UNMANAGED): 3}
    assert store.counts(CLUSTER) == (0, 0, ContainerCounts())


def test_invalid_policy_update_releases_its_pods(store: PodStore, registry: PolicyView) -> None:
    team = policy("team", namespace="default")
    registry.set_policy(team)
    observe(store, make_pod("a"))
    assert store.counts(team.ref) == (1, 1, ContainerCounts(missing=1))
    registry.set_invalid(PolicyKey.of(team), "spec.ratio: must be < 1")
    store.reevaluate_pending()
    assert store.counts(team.ref) == (0, 0, ContainerCounts())
    assert containers(store) == {("default", "", State.UNMANAGED): 1}


def test_a_namespaced_policy_change_only_queues_its_namespace(
    store: PodStore, registry: PolicyView
) -> None:
    for namespace in ("a", "b"):
        for index in range(3):
            observe(store, make_pod(f"p{index}", namespace))
    registry.set_policy(policy("team", namespace="a"))
    assert store.pending() == 3
    store.reevaluate_pending()
    assert containers(store) == {
        ("a", "GoMemPolicy/a/team", State.MISSING): 3,
        ("b", "", State.UNMANAGED): 3,
    }
    assert store.last_full_evaluation is None  # not every pod was re-evaluated


def test_namespaced_policy_beats_cluster_policy_and_releases_on_delete(
    store: PodStore, registry: PolicyView
) -> None:
    registry.set_policy(policy("all"))
    observe(store, make_pod("a", "team"))
    registry.set_policy(policy("local", namespace="team", ratio=0.5))
    store.reevaluate_pending()
    assert containers(store) == {("team", "GoMemPolicy/team/local", State.MISSING): 1}
    registry.remove_policy(PolicyKey("GoMemPolicy", "team", "local"))
    store.reevaluate_pending()
    assert containers(store) == {("team", CLUSTER, State.MISSING): 1}


def test_namespace_label_changes_queue_that_namespace_only(
    store: PodStore, registry: PolicyView
) -> None:
    prod = policy("prod", namespaceSelector={"matchLabels": {"env": "prod"}})
    registry.set_policy(prod)
    observe(store, make_pod("a", "shop"))
    observe(store, make_pod("b", "other"))
    store.reevaluate_pending()
    assert containers(store) == {
        ("shop", "", State.UNMANAGED): 1,
        ("other", "", State.UNMANAGED): 1,
    }
    registry.set_namespace("shop", {"env": "prod"})  # the namespace listener queues it
    assert store.pending() == 1  # shop's one pod; other's is not queued
    store.reevaluate_pending()
    assert containers(store) == {
        ("shop", prod.ref, State.MISSING): 1,
        ("other", "", State.UNMANAGED): 1,
    }
    registry.set_namespace("shop", {"env": "prod"})  # the same labels again: nothing to do
    assert store.pending() == 0
    registry.set_namespace("shop", {})
    store.reevaluate_pending()
    assert containers(store) == {
        ("shop", "", State.UNMANAGED): 1,
        ("other", "", State.UNMANAGED): 1,
    }
    registry.set_namespace("shop", {"env": "prod"})
    registry.remove_namespace("shop")  # forgotten: back to the name label only
    store.reevaluate_pending()
    assert containers(store)[("shop", "", State.UNMANAGED)] == 1


def test_chunked_reevaluation(store: PodStore, registry: PolicyView, clock: Clock) -> None:
    for index in range(10):
        observe(store, make_pod(f"p{index}"))
    registry.set_policy(policy("all"))
    assert store.reevaluate_pending(budget=4) == 6
    consistent(store)
    assert store.last_full_evaluation is None
    queued = [r for r in store.records() if r.policy is None]  # not re-evaluated yet
    assert len(queued) == 6
    assert store.forget(queued[0].uid)  # a pod deleted while queued leaves the queue
    assert store.pending() == 5
    assert store.reevaluate_pending(budget=4) == 1
    assert store.reevaluate_pending(budget=4) == 0
    assert store.last_full_evaluation == clock.now
    assert containers(store) == {("default", CLUSTER, State.MISSING): 9}


def test_noncompliant_containers(store: PodStore, registry: PolicyView) -> None:
    registry.set_policy(policy("all", containers=["app"]))
    crash = make_pod("crash", gomemlimit="512Mi", sidecar=True)
    crash["spec"]["containers"][1]["env"] = [{"name": "GOMEMLIMIT", "value": "1G"}]
    observe(store, crash)
    observe(store, make_pod("fine", gomemlimit="100MiB"))
    observe(store, make_pod("nolimit", limit=None))
    observe(store, make_pod("skipped", skip=True))
    assert sorted(store.snapshot().noncompliant, key=lambda c: (c.pod, c.container)) == [
        NoncompliantContainer("default", "crash", "app", CLUSTER, State.INVALID),
        # the sidecar is not in the policy's `containers`: invalid all the same
        NoncompliantContainer("default", "crash", "proxy", "", State.INVALID),
        NoncompliantContainer("default", "nolimit", "app", CLUSTER, State.NO_MEMORY_LIMIT),
    ]
    assert containers(store) == {
        ("default", CLUSTER, State.INVALID): 1,
        ("default", "", State.INVALID): 1,
        ("default", CLUSTER, State.COMPLIANT): 1,
        ("default", CLUSTER, State.NO_MEMORY_LIMIT): 1,
        ("default", CLUSTER, State.OPTED_OUT): 1,
    }
    assert store.counts(CLUSTER) == (
        4,
        4,
        ContainerCounts(invalid=1, compliant=1, no_memory_limit=1, opted_out=1),
    )
    assert store.forget("uid-default-crash")
    assert [c.pod for c in store.snapshot().noncompliant] == ["nolimit"]
    assert store.snapshot(noncompliant=False).noncompliant == []


def test_counts_wait_for_the_first_listing(registry: PolicyView, clock: Clock) -> None:
    store = PodStore(registry, settle_seconds=5, clock=clock, wall_clock=clock)
    registry.set_policy(policy("all"))
    observe(store, make_pod("a"), listing=True)
    assert store.counts(CLUSTER) is None
    clock.now += 4
    assert store.settle() == 0
    assert not store.synced
    clock.now += 1
    store.settle()
    assert store.synced
    assert store.counts(CLUSTER) == (1, 1, ContainerCounts(missing=1))
    # A re-listing after a watch reconnects: the records stay the last known state.
    observe(store, make_pod("b"), listing=True)
    assert store.synced
    assert store.counts(CLUSTER) == (2, 2, ContainerCounts(missing=2))


def test_without_quiet_sync_an_idle_store_waits_for_its_barrier(
    registry: PolicyView, clock: Clock
) -> None:
    store = PodStore(registry, settle_seconds=5, quiet_sync=False, clock=clock, wall_clock=clock)
    clock.now += 3600
    assert not store.synced
    assert store.counts(CLUSTER) is None
    store.begin_confirmation()
    store.finish_confirmation()
    assert store.synced


def test_the_barrier_counts_pods_that_events_mentioned(registry: PolicyView, clock: Clock) -> None:
    store = PodStore(registry, settle_seconds=5, quiet_sync=False, clock=clock, wall_clock=clock)
    observe(store, make_pod("early"), listing=True)  # before the barrier began
    store.begin_confirmation()
    listed = {"uid-default-early", "uid-default-late", "uid-default-gone", "uid-default-done"}
    assert store.unconfirmed(listed) == listed - {"uid-default-early"}
    observe(store, make_pod("late"), listing=True)
    store.forget("uid-default-gone")  # a DELETED event for a pod never recorded
    store.forget("uid-default-done", listing_namespace="default")  # listed, but finished
    assert store.unconfirmed(listed) == set()
    assert not store.synced  # the barrier itself decides when it is done
    store.finish_confirmation()
    assert store.synced
    assert store.unconfirmed({"uid-x"}) == {"uid-x"}  # no longer remembering events


def test_an_empty_scope_is_synced_after_a_quiet_while(registry: PolicyView, clock: Clock) -> None:
    store = PodStore(registry, settle_seconds=5, clock=clock, wall_clock=clock)
    assert not store.synced
    clock.now += 15
    assert store.synced
    assert store.counts("ClusterGoMemPolicy/x") == (0, 0, ContainerCounts())


def test_relisting_sweeps_pods_deleted_while_not_watching(
    registry: PolicyView, clock: Clock
) -> None:
    store = PodStore(registry, settle_seconds=5, clock=clock, wall_clock=clock)
    for namespace in ("a", "b"):
        for name in ("keep", "gone"):
            observe(store, make_pod(name, namespace), listing=True)
    clock.now += 5
    assert store.settle() == 0
    observe(store, make_pod("new", "a"))  # a watch event after the first listing
    # The watch breaks (410 Gone, or the replica was paused); namespace a is listed again.
    observe(store, make_pod("keep", "a"), listing=True)
    clock.now += 2
    observe(store, make_pod("later", "a"))  # created during the listing
    assert store.settle() == 0  # not quiet yet
    clock.now += 3
    assert store.settle() == 2  # a/gone and a/new were not listed
    names = sorted((r.namespace, r.name) for r in store.records())
    assert names == [("a", "keep"), ("a", "later"), ("b", "gone"), ("b", "keep")]
    consistent(store)


def test_cluster_wide_listing_sweeps_every_namespace(registry: PolicyView, clock: Clock) -> None:
    store = PodStore(
        registry, per_namespace_listing=False, settle_seconds=5, clock=clock, wall_clock=clock
    )
    observe(store, make_pod("x", "a"), listing=True)
    observe(store, make_pod("y", "b"), listing=True)
    clock.now += 5
    store.settle()
    observe(store, make_pod("x", "a"), listing=True)  # b's only pod vanished meanwhile
    clock.now += 5
    assert store.settle() == 1
    assert [r.name for r in store.records()] == ["x"]


def test_records_share_equal_labels_and_facts(store: PodStore, registry: PolicyView) -> None:
    for index in range(5):
        observe(store, make_pod(f"web-{index}", labels={"app": "web"}))
    observe(store, make_pod("db", labels={"app": "db"}, limit="2Gi"))
    assert store.interned() == (2, 2)
    records = {r.name: r for r in store.records()}
    assert records["web-0"].facts is records["web-4"].facts
    assert records["web-0"].labels is records["web-4"].labels
    for index in range(5):
        store.forget(f"uid-default-web-{index}")
    assert store.interned() == (1, 1)


# --- the compact record reproduces the engine's verdict on the full pod -----------------

POLICIES = [
    policy("all"),
    policy("override", onExisting="override", ratio=0.7, priority=5),
    policy("web", selector={"matchLabels": {"app": "web"}}, priority=10),
    policy("team", namespace="a", containers=["proxy"], minHeadroom="100Mi"),
    policy("prod", namespaceSelector={"matchLabels": {"env": "prod"}}, priority=20),
]

pods = st.builds(
    make_pod,
    name=st.sampled_from(["p0", "p1", "p2", "p3"]),
    namespace=st.sampled_from(["a", "b"]),
    labels=st.sampled_from([{}, {"app": "web"}, {"app": "db"}]),
    limit=st.sampled_from([None, "1Gi", "512Mi", "100Mi"]),
    gomemlimit=st.sampled_from([None, "921MiB", "512Mi", "2GiB", "off", "460MiB"]),
    injected=st.booleans(),
    sidecar=st.booleans(),
    skip=st.booleans(),
)
operations = st.one_of(
    st.tuples(st.just("observe"), pods, st.booleans()),
    st.tuples(st.just("forget"), st.sampled_from(["p0", "p1", "p2", "p3"]), st.sampled_from("ab")),
    st.tuples(st.just("set"), st.sampled_from(range(len(POLICIES))), st.booleans()),
    st.tuples(st.just("remove"), st.sampled_from(range(len(POLICIES))), st.booleans()),
    st.tuples(st.just("label-ns"), st.sampled_from("ab"), st.booleans()),
    st.tuples(st.just("reevaluate"), st.integers(0, 3), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operations, max_size=40))
def test_bookkeeping_matches_a_fresh_evaluation(ops: list[tuple[Any, Any, Any]]) -> None:
    registry = PolicyView()
    clock = Clock()
    store = PodStore(registry, settle_seconds=5, clock=clock, wall_clock=clock)
    registry.subscribe(store.policy_changed)
    registry.subscribe_namespaces(store.namespace_changed)
    alive: dict[str, dict[str, Any]] = {}
    for op, arg, flag in ops:
        if op == "observe":
            observe(store, arg, listing=flag)
            alive[arg["metadata"]["uid"]] = arg
        elif op == "forget":
            uid = f"uid-{flag}-{arg}"
            assert store.forget(uid) == (uid in alive)
            alive.pop(uid, None)
        elif op == "set":
            registry.set_policy(POLICIES[arg])
        elif op == "remove":
            registry.remove_policy(PolicyKey.of(POLICIES[arg]))
        elif op == "label-ns":
            registry.set_namespace(arg, {"env": "prod"} if flag else {})  # the listener queues
        else:
            store.reevaluate_pending(budget=arg)
        consistent(store)

    store.reevaluate_pending()
    consistent(store)
    assert {r.uid for r in store.records()} == set(alive)
    for record in store.records():
        pod = alive[record.uid]
        governing = registry.governing(record.namespace, labels_dict(record.labels))
        assert record.policy == governing
        reports = evaluate_pod(pod["metadata"], pod["spec"], governing)
        assert [(r.state, r.policy is not None) for r in reports] == list(record.verdicts)


# --- the compact forms: labels, shared label keys, shared facts ---------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6),
    st.one_of(st.none(), st.text(max_size=8)),
)
def test_labels_round_trip(labels: dict[str, str], name: str | None) -> None:
    compact = labels_key(labels, name)
    assert labels_dict(compact) == labels
    assert compact == labels_key(dict(reversed(labels.items())), name)  # order-independent
    if labels:
        assert compact[0] == tuple(sorted(labels))


def test_a_label_equal_to_the_pod_name_shares_the_name() -> None:
    name = "".join(["db-", "0"])  # a string of its own, as a decoded body holds it
    compact = labels_key({"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"}, name)
    assert compact == (("app", "statefulset.kubernetes.io/pod-name"), "db", "db-0")
    assert compact[2] is name
    assert labels_key(None) == labels_key({}) == ()
    assert labels_dict(()) == {}


def test_pool_counts_every_use() -> None:
    pool: _Pool[tuple[str, ...]] = _Pool()
    first, equal = ("x", "y"), tuple(["x", "y"])
    assert first is not equal
    assert pool.acquire(first) is first
    assert pool.acquire(equal) is first
    assert pool.acquire(first) is first
    assert len(pool) == 1
    assert pool.share(equal) is first  # a fourth use
    assert not pool.release(first)
    assert not pool.release(first)
    assert not pool.release(first)
    assert pool.release(first)  # the fourth use was the last
    assert len(pool) == 0
    assert pool.share(equal) is None
    assert len(pool) == 0


def test_statefulset_labels_are_kept_per_pod_with_shared_keys(
    store: PodStore, registry: PolicyView
) -> None:
    registry.set_policy(policy("all"))
    for index in range(3):
        name = f"db-{index}"
        observe(
            store,
            make_pod(name, labels={"app": "db", "statefulset.kubernetes.io/pod-name": name}),
        )
    for index in range(2):
        observe(store, make_pod(f"web-{index}", labels={"app": "web"}))
    records = {r.name: r for r in store.records()}
    assert store.interned()[0] == 4  # three label sets of their own, one shared
    assert store.pools() == {
        "labels": 1,
        "own_labels": 3,
        "label_keys": 2,
        "facts": 1,
        "containers": 1,
    }
    assert records["db-0"].labels[0] is records["db-2"].labels[0]  # the keys, once
    assert records["db-1"].labels[2] is records["db-1"].name  # the name, once
    assert records["web-0"].labels is records["web-1"].labels
    assert labels_dict(records["db-1"].labels) == {
        "app": "db",
        "statefulset.kubernetes.io/pod-name": "db-1",
    }
    # A label change that no longer names the pod moves it to the shared pool.
    observe(store, make_pod("db-1", labels={"app": "db"}))
    assert store.pools()["own_labels"] == 2
    assert store.pools()["labels"] == 2
    for name in ("db-0", "db-1", "db-2", "web-0", "web-1"):
        assert store.forget(f"uid-default-{name}")
    assert store.interned() == (0, 0)
    assert set(store.pools().values()) == {0}


def test_a_sidecar_shared_by_different_pods_is_kept_once(
    store: PodStore, registry: PolicyView
) -> None:
    registry.set_policy(policy("all"))
    for index in range(3):
        observe(store, make_pod(f"p{index}", limit=f"{index + 1}Gi", sidecar=True))
    observe(store, make_pod("q", limit="1Gi", sidecar=True))  # the same facts as p0
    records = {r.name: r for r in store.records()}
    assert records["p0"].facts is records["q"].facts
    assert records["p0"].facts != records["p1"].facts
    sidecars = {id(record.facts.containers[1]) for record in records.values()}
    assert len(sidecars) == 1
    assert store.pools()["facts"] == 3
    assert store.pools()["containers"] == 4  # three app containers, one sidecar
    assert store.forget("uid-default-p0")
    assert store.pools()["containers"] == 4  # q still holds p0's facts
    assert store.forget("uid-default-q")
    assert store.pools()["containers"] == 3
    for name in ("p1", "p2"):
        assert store.forget(f"uid-default-{name}")
    assert store.pools()["containers"] == 0


def test_queued_namespaces_are_looked_up_when_the_queue_is_read(
    store: PodStore, registry: PolicyView
) -> None:
    for namespace, name in (("a", "p0"), ("a", "p1"), ("b", "p0"), ("c", "p0")):
        observe(store, make_pod(name, namespace))
    store.invalidate(["a"])
    store.invalidate(["a", "b"])  # one pass over the records for both
    assert store.forget("uid-a-p1")  # gone before the lookup: not queued
    observe(store, make_pod("p2", "a"))  # new since: queued too, which is harmless
    assert store.pending() == 3
    assert store.reevaluate_pending() == 0
    assert store.pending() == 0
    store.invalidate(["c"])
    store.invalidate()  # every pod, the queued namespace's included
    assert store.pending() == len(store) == 4
