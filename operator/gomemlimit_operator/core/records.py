"""The pod watcher's memory: a compact record per pod and exact aggregates.

The store never keeps a pod object. Per pod it keeps its identity, its labels
(to re-run policy precedence), the engine's :class:`~.engine.PodFacts` (enough to
reproduce every container's state under any policy), the governing policy and
one verdict per container: about 300 bytes for Deployment-like pods and 450 to 700
bytes when no two pods are alike (bench/bench_records.py). What makes it small:

* one dict of records by uid, and no other per-pod index (see :class:`PodStore`);
* labels as one tuple of their values after a shared tuple of their keys
  (:func:`labels_key`); equal label sets are shared between pods (replicas of one
  workload), except a set that holds the pod's own name (a StatefulSet's
  ``statefulset.kubernetes.io/pod-name``), which no other pod can share: it is kept with
  the name's own string and without a pool entry;
* equal pod facts are shared, and so are equal container facts across pods whose other
  containers differ (a sidecar every pod runs is kept once);
* the interning pools count uses only for values used more than once (:class:`_Pool`).

Aggregates are kept incrementally, so a scrape or a status update costs
O(series), not O(pods):

* containers per (namespace, policy, state): the ``gomemlimit_containers`` gauge;
* per policy: matched pods, governed containers and their states (policy status);
* the pods that have a container in :data:`~.engine.NONCOMPLIANT_STATES`.

:meth:`PodStore.recount` recomputes the same aggregates from the records; the
tests compare both after every step.

Policy and namespace label changes do not touch the API: :meth:`PodStore.invalidate`
queues the pods of the affected namespaces and :meth:`PodStore.reevaluate_pending`
recomputes them from their records in chunks, so an adapter can yield to its event loop.

Thread-safety: one lock guards everything. kopf handlers run in its event loop,
registry listeners may run in kopf's thread pool and Prometheus scrapes in the
HTTP server's thread. The registry is only ever called with the store's lock
held (never the other way round), so the two locks cannot deadlock.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from gomemlimit_operator.core.api import ContainerCounts, Policy
from gomemlimit_operator.core.engine import (
    NONCOMPLIANT_STATES,
    ContainerFacts,
    PodFacts,
    State,
    container_state,
    governing_policy,
)
from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView

__all__ = [
    "Aggregates",
    "NoncompliantContainer",
    "PodRecord",
    "PodStore",
    "Snapshot",
]

PackedLabels = tuple[tuple[str, ...], *tuple[str, ...]]
Labels = tuple[()] | PackedLabels
"""Pod labels: ``()``, or ``(keys, value1, value2, ...)`` with the keys sorted (see
:func:`labels_key`). The keys tuple is shared by every label set with the same keys."""
Verdict = tuple[State, bool]
"""A container's state, and whether the pod's policy governs the container."""
Scope = str | None
"""What one kopf watch stream lists: a namespace, or None for a cluster-wide stream."""

_VERDICTS: Final[dict[Verdict, Verdict]] = {
    (state, governed): (state, governed) for state in State for governed in (False, True)
}
_VERDICT_TUPLES: dict[tuple[Verdict, ...], tuple[Verdict, ...]] = {}
_MAX_VERDICT_TUPLES: Final = 4096
_STATE_FIELDS: Final = frozenset(ContainerCounts.model_fields)

H = TypeVar("H", bound=Hashable)


class _Pool(Generic[H]):
    """Reference-counted interning: equal values share one object while any record uses it.

    One dict entry per distinct value (the value is its own key). Most values in the worst
    case are used once, so only the values in use more than once have a count, in a second
    dict.
    """

    __slots__ = ("_canonical", "_more")

    def __init__(self) -> None:
        self._canonical: dict[H, H] = {}
        self._more: dict[H, int] = {}

    def share(self, value: H) -> H | None:
        """The canonical object equal to ``value``, counted once; None (and nothing counted)
        if there is none, for the caller to :meth:`acquire` the value it makes."""
        canonical = self._canonical.get(value)
        if canonical is not None:
            self._more[canonical] = self._more.get(canonical, 1) + 1
        return canonical

    def acquire(self, value: H) -> H:
        """The canonical object equal to ``value`` (``value`` itself if new), counted once."""
        canonical = self._canonical.get(value)
        if canonical is None:
            self._canonical[value] = value
            return value
        self._more[canonical] = self._more.get(canonical, 1) + 1
        return canonical

    def release(self, canonical: H) -> bool:
        """Give back one use of a canonical object; True if that was its last use."""
        count = self._more.get(canonical)
        if count is None:
            del self._canonical[canonical]
            return True
        if count == 2:
            del self._more[canonical]
        else:
            self._more[canonical] = count - 1
        return False

    def __len__(self) -> int:
        return len(self._canonical)


def labels_key(labels: Mapping[str, str] | None, name: str | None = None) -> Labels:
    """The compact form of a pod's labels: ``()``, or the sorted tuple of keys followed by
    the values in that order. Keys and values are interned (``sys.intern``), except a value
    equal to ``name`` (the pod's name, as StatefulSet pods carry it in
    ``statefulset.kubernetes.io/pod-name``), which is ``name`` itself: the record keeps that
    string anyway, and interning a string used once only costs an entry in the interned table.
    """
    if not labels:
        return ()
    keys = sorted(labels)
    values: list[str] = []
    for key in keys:
        value = str(labels[key])
        values.append(name if value == name and name is not None else sys.intern(value))
    return (tuple(sys.intern(str(key)) for key in keys), *values)


def labels_dict(labels: Labels) -> dict[str, str]:
    """The labels of :func:`labels_key`'s compact form, as a dict."""
    if not labels:
        return {}
    return dict(zip(labels[0], labels[1:], strict=True))


@dataclass(slots=True)
class PodRecord:
    """Everything the watcher keeps about one pod."""

    namespace: str
    name: str
    uid: str
    labels: Labels
    facts: PodFacts
    policy: Policy | None
    """The policy that governed the pod when it was last evaluated."""
    verdicts: tuple[Verdict, ...]
    """One per entry of ``facts.containers``."""
    seen: int = 0
    """The listing epoch of the pod's watch scope when the pod was last seen."""

    @property
    def policy_ref(self) -> str:
        return "" if self.policy is None else self.policy.ref


@dataclass(frozen=True, slots=True)
class NoncompliantContainer:
    namespace: str
    pod: str
    container: str
    policy: str
    """The governing policy's ref, or "" when no policy governs the container."""
    state: State


@dataclass
class Aggregates:
    """Counts derived from the records. Compared with ``==`` in tests."""

    containers: dict[tuple[str, str, State], int] = field(default_factory=dict)
    """(namespace, policy ref or "", state) -> containers."""
    matched_pods: dict[str, int] = field(default_factory=dict)
    governed: dict[str, dict[State, int]] = field(default_factory=dict)
    """policy ref -> state -> governed containers."""
    problems: dict[str, tuple[NoncompliantContainer, ...]] = field(default_factory=dict)
    """uid -> the containers in NONCOMPLIANT_STATES, for pods that have any."""


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of what the metrics need, taken under the lock."""

    containers: dict[tuple[str, str, State], int]
    noncompliant: list[NoncompliantContainer]
    pods: int
    synced: bool
    last_full_evaluation: float | None
    events: dict[str, int]
    reevaluated_pods: int


def _add(counter: dict[H, int], key: H, delta: int) -> None:
    count = counter.get(key, 0) + delta
    if count:
        counter[key] = count
    else:
        del counter[key]


class _Pass:
    """Caches for one evaluation batch: policies snapshot, governing policy, verdicts.

    Keyed by the identity of the snapshot's policy objects, which the pass keeps
    alive, so an id is never reused while the cache exists.
    """

    def __init__(self, registry: PolicyView) -> None:
        self.registry = registry
        self.policies = registry.policies()
        self._namespaces: dict[str, dict[str, str]] = {}
        self._governing: dict[tuple[str, Labels], Policy | None] = {}
        self._verdicts: dict[tuple[PodFacts, int], tuple[Verdict, ...]] = {}

    def governing(self, namespace: str, labels: Labels) -> Policy | None:
        key = (namespace, labels)
        try:
            return self._governing[key]
        except KeyError:
            pass
        ns_labels = self._namespaces.get(namespace)
        if ns_labels is None:
            ns_labels = self._namespaces[namespace] = self.registry.namespace_labels(namespace)
        policy = governing_policy(namespace, labels_dict(labels), ns_labels, self.policies)
        self._governing[key] = policy
        return policy

    def verdicts(self, facts: PodFacts, policy: Policy | None) -> tuple[Verdict, ...]:
        key = (facts, id(policy))
        try:
            return self._verdicts[key]
        except KeyError:
            pass
        result = verdicts(facts, policy)
        self._verdicts[key] = result
        return result


def verdicts(facts: PodFacts, policy: Policy | None) -> tuple[Verdict, ...]:
    """The engine's state for every container of a pod, under the pod's governing policy."""
    result = []
    for container in facts.containers:
        result.append(_VERDICTS[container_state(container, policy, facts.opted_out)])
    verdict = tuple(result)
    if len(_VERDICT_TUPLES) < _MAX_VERDICT_TUPLES:  # share the few common combinations
        return _VERDICT_TUPLES.setdefault(verdict, verdict)
    return _VERDICT_TUPLES.get(verdict, verdict)


class PodStore:
    """Compact records of the watched pods, with exact aggregates.

    ``per_namespace_listing``: whether kopf lists pods per namespace (it was
    started with namespaces) rather than cluster-wide. It only decides which
    records a finished re-listing may sweep (see :meth:`observe`); the safe
    default, True, can only leave a ghost behind, never drop a live pod.

    The records are in one dict, by uid. The operations that concern the pods of one
    namespace are rare (a namespaced policy or a namespace's labels changed, a listing
    settled) and scan the records instead, once for every batch of them
    (:meth:`invalidate`, :meth:`settle`): an index by namespace would cost a dict entry per
    pod for good, about 35 bytes.
    """

    def __init__(
        self,
        registry: PolicyView,
        *,
        per_namespace_listing: bool = True,
        settle_seconds: float = 10.0,
        quiet_sync: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.per_namespace_listing = per_namespace_listing
        self.settle_seconds = settle_seconds
        self.quiet_sync = quiet_sync
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}
        # Interning (see _share_labels and _share_facts): label sets, their keys, pod facts
        # and container facts. A label set with the pod's own name as a value is unique to
        # that pod, so it is not pooled (only counted, for interned()).
        self._labels: _Pool[Labels] = _Pool()
        self._label_keys: _Pool[tuple[str, ...]] = _Pool()
        self._own_labels = 0
        self._facts: _Pool[PodFacts] = _Pool()
        self._containers: _Pool[ContainerFacts] = _Pool()
        self._agg = Aggregates()
        # Re-evaluation queue (an ordered set of uids) and whether it covers every pod; the
        # namespaces whose pods are still to be queued (see _queue_namespaces).
        self._pending: dict[str, None] = {}
        self._pending_namespaces: set[str] = set()
        self._pending_full = False
        self._last_full: float | None = None
        self._reevaluated = 0
        # Listing epochs: a kopf (re-)listing marks the pods it sees; a settled listing
        # sweeps the pods of its scope that it did not see (deleted while not watching).
        self._started = clock()
        self._epochs: dict[Scope, int] = {}
        self._listing: dict[Scope, float] = {}
        self._listings_done = 0
        self._events: Counter[str] = Counter()
        # The start-up barrier (see begin_confirmation) and whether the store was ever synced.
        self._touched: set[str] | None = None
        self._confirmed = False
        self._was_synced = False

    # --- pod events ---------------------------------------------------------------------

    def observe(
        self,
        namespace: str,
        name: str,
        uid: str,
        labels: Mapping[str, str] | None,
        facts: PodFacts,
        *,
        listing: bool = False,
    ) -> None:
        """A pod exists with these labels and facts. Repeating an event changes nothing.

        ``listing``: the event comes from kopf's initial listing (event type None).
        """
        compact = labels_key(labels, name)
        namespace = sys.intern(namespace)
        with self._lock:
            if self._touched is not None:
                self._touched.add(uid)
            seen = self._touch_scope(namespace, listing)
            old = self._pods.get(uid)
            if old is not None and old.labels == compact and old.facts == facts:
                old.seen = seen  # the common case: a status-only update
                return
            evaluation = _Pass(self.registry)
            policy = evaluation.governing(namespace, compact)
            record = PodRecord(
                namespace=namespace,
                name=name,
                uid=uid,
                labels=self._share_labels(compact, name),
                facts=self._share_facts(facts),
                policy=policy,
                verdicts=verdicts(facts, policy),
                seen=seen,
            )
            if old is not None:
                self._drop(old)
            self._insert(record)

    def forget(self, uid: str, *, listing_namespace: str | None = None) -> bool:
        """A pod is gone (deleted, or finished). True if it was known.

        ``listing_namespace``: the pod came from a listing (a finished pod, listed): it
        still tells that a listing of that namespace's scope is in progress.
        """
        with self._lock:
            if self._touched is not None:
                self._touched.add(uid)
            if listing_namespace is not None:
                self._touch_scope(sys.intern(listing_namespace), True)
            record = self._pods.get(uid)
            if record is None:
                return False
            self._drop(record)
            self._pending.pop(uid, None)
            return True

    def count_event(self, kind: str) -> None:
        """Count a watch event by kind, for ``gomemlimit_watch_events_total``."""
        with self._lock:
            self._events[kind] += 1

    # --- listings and sweeping ------------------------------------------------------------

    def _scope(self, namespace: str) -> Scope:
        return namespace if self.per_namespace_listing else None

    def _touch_scope(self, namespace: str, listing: bool) -> int:
        scope = self._scope(namespace)
        if listing:
            if scope not in self._listing:
                self._epochs[scope] = self._epochs.get(scope, 0) + 1
            self._listing[scope] = self._clock()
        return self._epochs.get(scope, 0)

    def settle(self) -> int:
        """Finish listings quiet for ``settle_seconds``: drop the pods they did not list.

        Returns how many records were swept. A pod listed so late that it was
        swept comes back with its listing event.
        """
        now = self._clock()
        with self._lock:
            settled: dict[Scope, int] = {}  # scope -> its listing's epoch
            for scope, last in list(self._listing.items()):
                if now - last < self.settle_seconds:
                    continue
                del self._listing[scope]
                self._listings_done += 1
                settled[scope] = self._epochs[scope]
            if not settled:
                return 0
            # One pass over the records for every listing settled now. A record whose scope
            # did not settle compares with 0, and no record's epoch is below 0.
            per_namespace = self.per_namespace_listing
            unlisted = [
                record
                for record in self._pods.values()
                if record.seen < settled.get(record.namespace if per_namespace else None, 0)
            ]
            for record in unlisted:
                self._drop(record)
                self._pending.pop(record.uid, None)
        return len(unlisted)

    @property
    def synced(self) -> bool:
        """Whether the records cover every pod: once true, it stays true.

        True once the start-up barrier confirmed that the watch delivered every pod a
        LIST returned (:meth:`finish_confirmation`), or once a listing settled with no
        listing in progress, or (with ``quiet_sync``) after ``3 * settle_seconds`` without
        any listing (a cluster with no pods to list). Later re-listings after a watch
        reconnects do not make it false again: the records are the last known state, kept
        current by the catch-up, which beats reporting nothing for the listing's duration.
        """
        with self._lock:
            return self._synced()

    def _synced(self) -> bool:
        if self._was_synced:
            return True
        if self._confirmed:
            self._was_synced = True
        elif not self._listing:
            quiet = self.quiet_sync and self._clock() - self._started >= 3 * self.settle_seconds
            self._was_synced = self._listings_done > 0 or quiet
        return self._was_synced

    # --- the start-up barrier -------------------------------------------------------------

    def begin_confirmation(self) -> None:
        """Start remembering which pods events mention, for :meth:`unconfirmed`.

        Call it before the LIST whose pods the watch must have delivered. kopf does not say
        when its initial listing is complete; a LIST taken after the watch started tells
        which pods it must deliver (or report deleted). The records themselves only ever
        come from the watch, so a LIST that is older than the watch's own listing can never
        bring back a pod deleted in between.
        """
        with self._lock:
            if self._touched is None:
                self._touched = set()

    def unconfirmed(self, uids: Iterable[str]) -> set[str]:
        """Those of ``uids`` that no event has mentioned since :meth:`begin_confirmation`
        and that have no record."""
        with self._lock:
            touched = self._touched or set()
            return {uid for uid in uids if uid not in self._pods and uid not in touched}

    def finish_confirmation(self) -> None:
        """Every pod of the barrier's LIST was delivered: the store is synced."""
        with self._lock:
            self._touched = None
            self._confirmed = True

    # --- re-evaluation without pod events -------------------------------------------------

    def invalidate(self, namespaces: Iterable[str] | None = None) -> None:
        """Queue the pods of these namespaces (None: every pod) for re-evaluation.

        Cheap: the pods of the namespaces are looked up by the next :meth:`pending` or
        :meth:`reevaluate_pending`, in one pass over the records for every namespace
        queued since.
        """
        with self._lock:
            if namespaces is None:
                self._pending.update(dict.fromkeys(self._pods))
                self._pending_full = True
                self._pending_namespaces.clear()
            else:
                self._pending_namespaces.update(namespaces)

    def _queue_namespaces(self) -> None:
        """Queue the pods of the namespaces :meth:`invalidate` was given (lock held)."""
        if self._pending_namespaces:
            wanted = self._pending_namespaces
            self._pending.update(
                {uid: None for uid, record in self._pods.items() if record.namespace in wanted}
            )
            self._pending_namespaces = set()

    def namespace_changed(self, name: str, old: Mapping[str, str], new: Mapping[str, str]) -> None:
        """A :class:`~.registry.PolicyView` namespace listener: a namespace's labels changed,
        so a ClusterGoMemPolicy's ``namespaceSelector`` may now select its pods, or not."""
        self.invalidate([name])

    def policy_changed(self, key: PolicyKey, old: Policy | None, new: Policy | None) -> None:
        """A :class:`~.registry.PolicyView` listener: queue the pods the change can affect.

        A namespaced policy can only govern pods of its namespace; a cluster policy
        any pod. Cheap: the work happens in :meth:`reevaluate_pending`.
        """
        if key.namespace is None:
            self.invalidate(None)
        else:
            self.invalidate([key.namespace])

    def pending(self) -> int:
        """How many pods are queued for re-evaluation."""
        with self._lock:
            self._queue_namespaces()
            return len(self._pending)

    def reevaluate_pending(self, budget: int | None = None) -> int:
        """Re-evaluate up to ``budget`` queued pods from their records; return how many remain.

        Governing policies and verdicts are computed once per distinct labels and
        facts in the batch. No API call: everything comes from the records and the
        registry. Finishing a queue that covered every pod records the time of the
        last full evaluation.
        """
        with self._lock:
            self._queue_namespaces()
            evaluation = _Pass(self.registry)
            count = 0
            while self._pending and (budget is None or count < budget):
                uid, _ = self._pending.popitem()  # O(1); deleting from the front is not
                count += 1
                record = self._pods.get(uid)
                if record is None:
                    continue
                policy = evaluation.governing(record.namespace, record.labels)
                if policy is record.policy:
                    continue
                new_verdicts = evaluation.verdicts(record.facts, policy)
                self._account(record, -1)
                record.policy, record.verdicts = policy, new_verdicts
                self._account(record, +1)
            self._reevaluated += count
            if not self._pending and self._pending_full:
                self._pending_full = False
                self._last_full = self._wall()
            return len(self._pending)

    @property
    def last_full_evaluation(self) -> float | None:
        """Wall-clock time at which a re-evaluation of every stored pod last finished."""
        with self._lock:
            return self._last_full

    # --- bookkeeping ----------------------------------------------------------------------

    def _insert(self, record: PodRecord) -> None:
        self._pods[record.uid] = record
        self._account(record, +1)

    def _drop(self, record: PodRecord) -> None:
        self._account(record, -1)
        del self._pods[record.uid]
        self._release_labels(record.labels, record.name)
        self._release_facts(record.facts)

    # --- interning ------------------------------------------------------------------------

    def _share_labels(self, labels: Labels, name: str) -> Labels:
        """The shared object for a pod's compact labels (``labels_key(..., name)``)."""
        if not labels:
            return labels
        if _own(labels, name):
            self._own_labels += 1
            return self._with_shared_keys(labels)
        shared = self._labels.share(labels)
        if shared is not None:
            return shared
        return self._labels.acquire(self._with_shared_keys(labels))

    def _with_shared_keys(self, labels: PackedLabels) -> PackedLabels:
        keys = self._label_keys.acquire(labels[0])
        return labels if keys is labels[0] else (keys, *labels[1:])

    def _release_labels(self, labels: Labels, name: str) -> None:
        if not labels:
            return
        if _own(labels, name):
            self._own_labels -= 1
        elif not self._labels.release(labels):
            return
        self._label_keys.release(labels[0])

    def _share_facts(self, facts: PodFacts) -> PodFacts:
        """The shared object for these facts, made of shared container facts: a sidecar
        that every pod runs is kept once, even where the pods' other containers differ."""
        shared = self._facts.share(facts)
        if shared is not None:
            return shared
        containers = tuple(self._containers.acquire(c) for c in facts.containers)
        if any(c is not o for c, o in zip(containers, facts.containers, strict=True)):
            facts = PodFacts(facts.opted_out, containers)
        return self._facts.acquire(facts)

    def _release_facts(self, facts: PodFacts) -> None:
        if self._facts.release(facts):
            for container in facts.containers:
                self._containers.release(container)

    def _account(self, record: PodRecord, sign: int) -> None:
        _accumulate(self._agg, record, sign)

    # --- reading --------------------------------------------------------------------------

    def counts(self, policy_ref: str) -> tuple[int, int, ContainerCounts] | None:
        """For policy status: (matched pods, governed containers, containers per state).

        None until the store is synced (the first listing finished), so a status
        writer never publishes the partial counts of a listing in progress.
        """
        with self._lock:
            if not self._synced():
                return None
            matched = self._agg.matched_pods.get(policy_ref, 0)
            states = dict(self._agg.governed.get(policy_ref, {}))
        governed = sum(states.values())
        per_state = {s.value: n for s, n in states.items() if s.value in _STATE_FIELDS}
        return matched, governed, ContainerCounts(**per_state)

    def snapshot(self, noncompliant: bool = True) -> Snapshot:
        with self._lock:  # copy references only: event handlers wait on this lock
            per_pod = list(self._agg.problems.values()) if noncompliant else []
            snapshot = Snapshot(
                containers=dict(self._agg.containers),
                noncompliant=[],
                pods=len(self._pods),
                synced=self._synced(),
                last_full_evaluation=self._last_full,
                events=dict(self._events),
                reevaluated_pods=self._reevaluated,
            )
        snapshot.noncompliant.extend(item for items in per_pod for item in items)
        return snapshot

    def aggregates(self) -> Aggregates:
        """A copy of the incrementally kept aggregates."""
        with self._lock:
            return _copy(self._agg)

    def recount(self) -> Aggregates:
        """The aggregates recomputed from the records (for tests and the benchmark)."""
        with self._lock:
            fresh = Aggregates()
            for record in self._pods.values():
                _accumulate(fresh, record, +1)
            return fresh

    def records(self) -> list[PodRecord]:
        with self._lock:
            return list(self._pods.values())

    def get(self, uid: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)

    def interned(self) -> tuple[int, int]:
        """(distinct label sets, distinct pod facts) held; for tests and the benchmark.

        A label set that holds its pod's own name counts once per pod (it is not pooled).
        """
        with self._lock:
            return len(self._labels) + self._own_labels, len(self._facts)

    def pools(self) -> dict[str, int]:
        """Distinct values held by each interning pool; for tests and the benchmark."""
        with self._lock:
            return {
                "labels": len(self._labels),
                "own_labels": self._own_labels,
                "label_keys": len(self._label_keys),
                "facts": len(self._facts),
                "containers": len(self._containers),
            }


def _own(labels: Labels, name: str) -> bool:
    """Whether the compact labels hold the pod's own name as a value."""
    return name in labels[1:]


def _accumulate(agg: Aggregates, record: PodRecord, sign: int) -> None:
    ref = record.policy_ref
    if ref:
        _add(agg.matched_pods, ref, sign)
    problem = False
    for state, governed in record.verdicts:
        _add(agg.containers, (record.namespace, ref if governed else "", state), sign)
        if governed:
            per_state = agg.governed.setdefault(ref, {})
            _add(per_state, state, sign)
            if not per_state:
                del agg.governed[ref]
        problem = problem or state in NONCOMPLIANT_STATES
    if problem:
        if sign > 0:
            agg.problems[record.uid] = _noncompliant(record, ref)
        else:
            del agg.problems[record.uid]


def _noncompliant(record: PodRecord, ref: str) -> tuple[NoncompliantContainer, ...]:
    ref = sys.intern(ref)  # a policy's ref is a new string each time
    return tuple(
        NoncompliantContainer(
            record.namespace, record.name, container.name, ref if governed else "", state
        )
        for container, (state, governed) in zip(
            record.facts.containers, record.verdicts, strict=True
        )
        if state in NONCOMPLIANT_STATES
    )


def _copy(agg: Aggregates) -> Aggregates:
    return Aggregates(
        containers=dict(agg.containers),
        matched_pods=dict(agg.matched_pods),
        governed={ref: dict(states) for ref, states in agg.governed.items()},
        problems=dict(agg.problems),
    )
