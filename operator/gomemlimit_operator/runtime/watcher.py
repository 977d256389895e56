"""The pod compliance watcher: kopf pod events into the record store, and its housekeeping.

Pods are watched with ``@kopf.on.event`` only; the handler returns None, so kopf writes
nothing onto any pod (no annotation, no finalizer, no status). Each event is reduced at once
to the engine's :class:`~.engine.PodFacts`; the body is not kept.

* ADDED/MODIFIED and listing events (type None) record the pod; DELETED forgets it. Pods
  that finished (phase Succeeded or Failed) are forgotten too: their containers no longer run.
* Every pod of a watched namespace is recorded, including kube-system and the operator's
  own namespace: exemption is a webhook matter. Those pods show as ``unmanaged`` unless a
  policy selects them, which is then worth seeing.
* Policy changes reach the store through the registry listener (:meth:`PodStore.policy_changed`),
  namespace label changes through the namespace listener (:meth:`PodStore.namespace_changed`),
  and are re-evaluated here, from the records, in chunks that yield to the event loop: no API
  call and no pod event needed. A full pass every ``full_interval`` re-evaluates every pod as a
  safety net and stamps the time of the last full evaluation, which a stalled watcher stops
  advancing.
* :func:`confirm_listing` is the start-up barrier: kopf does not say when its initial listing
  is complete, so a LIST of pod uids (:func:`pod_uid_lister`) tells which pods the watch must
  deliver before the store counts as synced (and policy status may be written). Ten seconds
  later, once kopf's per-pod workers of the listing have exited, it calls ``gc.freeze()``
  (:func:`freeze_records`): the records of the initial listing are the bulk of the process's
  long-lived objects, and later full collections, which pause the event loop, no longer walk
  them (see bench/bench_records.py for the pauses before and after).
  Records are still freed when their pods go: they hold no reference cycles.

Every replica watches pods and keeps its store current, so that a new leader can take over
with complete records; only the leader exports the pod series and writes status (see
:mod:`leader`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import kopf

from gomemlimit_operator.core.engine import PodTooLarge, SpecError, pod_facts
from gomemlimit_operator.core.records import PodStore

__all__ = [
    "FREEZE_AFTER",
    "TERMINAL_PHASES",
    "PodWatcher",
    "confirm_listing",
    "freeze_records",
    "pod_uid_lister",
    "register",
]

logger = logging.getLogger(__name__)

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
PARTIAL_METADATA: Final = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
"""Ask the API server for metadata only; plain JSON from a server that cannot."""
NOT_FINISHED: Final = "status.phase!=Succeeded,status.phase!=Failed"
PAGE: Final = 500
FREEZE_AFTER: Final = 10.0
"""Seconds from the start-up barrier to :func:`freeze_records`: twice kopf's queueing
``idle_timeout`` (5 s), after which the per-pod workers of the initial listing have exited.
Frozen while alive, their teardown's reference cycles could never be collected."""


class PodWatcher:
    """Applies pod events to a :class:`PodStore` and keeps it evaluated.

    ``watches(namespace)``: whether pods of this namespace are handled (the operator's
    ``--watch-namespace`` setting; kopf may already restrict its watch to them).
    ``is_active()``: whether this replica should run full passes (every replica does in the
    operator, since every replica watches).
    """

    def __init__(
        self,
        store: PodStore,
        *,
        watches: Callable[[str], bool] = lambda namespace: True,
        is_active: Callable[[], bool] = lambda: True,
        interval: float = 1.0,
        full_interval: float = 60.0,
        chunk: int = 1000,
    ) -> None:
        self.store = store
        self.watches = watches
        self.is_active = is_active
        self.interval = interval
        self.full_interval = full_interval
        self.chunk = chunk
        self._last_full_start: float | None = None

    # --- events ---------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any]) -> None:
        """Apply one kopf pod event (``{"type": ..., "object": body}``)."""
        kind = event.get("type")
        body = event.get("object")
        if not isinstance(body, Mapping):
            return
        metadata = body.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "")
        name = str(metadata.get("name") or "")
        uid = str(metadata.get("uid") or "")
        if not (namespace and name and uid):
            return
        if not self.watches(namespace):
            self.store.count_event("ignored")
            return
        listing = kind is None
        self.store.count_event("listed" if listing else str(kind).lower())
        if kind == "DELETED":
            self.store.forget(uid)
            return
        phase = (body.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES:
            self.store.forget(uid, listing_namespace=namespace if listing else None)
            return
        try:
            facts = pod_facts(metadata, body.get("spec") or {})
        except PodTooLarge as exc:  # not recorded: its cost is what the bounds prevent
            logger.warning("Not evaluating pod %s/%s: %s", namespace, name, exc.problem)
            self.store.count_event("too_large")
            self.store.forget(uid, listing_namespace=namespace if listing else None)
            return
        except SpecError as exc:  # the API server validated it: should never happen
            logger.warning("Cannot evaluate pod %s/%s: %s", namespace, name, exc)
            self.store.count_event("error")
            self.store.forget(uid, listing_namespace=namespace if listing else None)
            return
        self.store.observe(namespace, name, uid, metadata.get("labels"), facts, listing=listing)

    # --- housekeeping ---------------------------------------------------------------------

    def step(self, now: float) -> int:
        """One round without re-evaluating: settle listings, maybe queue a full pass.

        Returns the number of pods queued for re-evaluation.
        """
        swept = self.store.settle()
        if swept:
            logger.info("Forgot %d pods deleted while the watch was not running.", swept)
        if (
            self.is_active()
            and self.store.synced
            and (self._last_full_start is None or now - self._last_full_start >= self.full_interval)
        ):
            self._last_full_start = now
            self.store.invalidate()
        return self.store.pending()

    async def drain(self) -> None:
        """Re-evaluate every queued pod, ``chunk`` at a time, yielding between chunks."""
        while self.store.reevaluate_pending(self.chunk):
            await asyncio.sleep(0)

    async def run(self) -> None:
        """Forever: settle, queue full passes, drain the queue; every ``interval`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.step(loop.time())
                await self.drain()
            except Exception:  # a bug must not stop the watcher's bookkeeping for good
                logger.exception("Pod watcher housekeeping failed.")
            await asyncio.sleep(self.interval)


async def confirm_listing(
    store: PodStore,
    list_uids: Callable[[], Collection[str]],
    *,
    poll: float = 0.2,
    relist_after: float = 5.0,
    max_relist_after: float = 60.0,
    retry: float = 2.0,
    freeze_after: float = FREEZE_AFTER,
    freeze: Callable[[], None] | None = None,
) -> None:
    """The start-up barrier: return once the watch delivered every pod a LIST returned.

    ``list_uids()`` (blocking; run in a thread) returns the uids of the pods that exist now.
    Each must reach the store through the watch, or be mentioned by an event (deleted,
    finished). A LIST taken before kopf's own listing may name a pod deleted in between,
    which the watch never reports: so once ``relist_after`` seconds have passed without the
    watch confirming any of the pods still unconfirmed, they are looked up again with a new
    LIST, and dropped if they are gone. While the watch keeps confirming pods (a long
    listing), no LIST is repeated: each would cost the API server and this process a full
    LIST. The wait between LISTs doubles up to ``max_relist_after``. Then
    :meth:`PodStore.finish_confirmation`
    marks the store synced. An empty cluster is synced as soon as the LIST answers.
    ``freeze_after`` seconds later, the event loop calls ``freeze`` (default
    :func:`freeze_records`), which moves the records, with everything else alive then, out
    of the garbage collector's sight.
    """
    store.begin_confirmation()
    loop = asyncio.get_running_loop()
    pending: set[str] | None = None
    wait = relist_after
    failures = 0
    while True:
        try:
            listed = await asyncio.to_thread(list_uids)
        except Exception as exc:
            failures += 1
            level = logging.WARNING if failures == 1 or failures % 15 == 0 else logging.DEBUG
            logger.log(level, "Listing pods for the start-up barrier failed: %s", exc)
            await asyncio.sleep(retry)
            continue
        pending = store.unconfirmed(listed if pending is None else pending.intersection(listed))
        while pending:
            before = len(pending)
            deadline = loop.time() + wait
            while pending and loop.time() < deadline:
                await asyncio.sleep(poll)
                pending = store.unconfirmed(pending)
            if len(pending) == before:
                break  # no progress: list again
            if pending:
                logger.info("Waiting for the pod watch to deliver %d more pods.", len(pending))
        if not pending:
            break
        logger.info(
            "The pod watch delivered none of %d listed pods for %.0f s; listing again.",
            len(pending),
            wait,
        )
        wait = min(wait * 2, max_relist_after)
    store.finish_confirmation()
    logger.info("Pod records synced: %d pods.", len(store))
    loop.call_later(freeze_after, freeze or freeze_records)


def freeze_records() -> None:
    """``gc.freeze()``: later full collections skip every object alive now, the records of
    the initial listing above all. No collection first: at 20,000 pods that one took 620 ms,
    a pause of the event loop that serves the webhook too; what garbage is alive now gets
    frozen with the rest, a bounded one-time cost (as ``loop_monitor.freeze_when``)."""
    before = gc.get_freeze_count()
    gc.freeze()
    logger.info(
        "Moved %d objects out of the garbage collector's sight (gc.freeze).",
        gc.get_freeze_count() - before,
    )


def pod_uid_lister(
    api_client: Any, watch_namespaces: tuple[str, ...] = ()
) -> Callable[[], set[str]]:
    """A blocking function that LISTs the uids of the pods that have not finished.

    Paged (500 per page), metadata only (``PartialObjectMetadataList``), and each page's
    JSON is dropped once its uids are read: nothing but the uid strings is kept.
    """
    from kubernetes.client import CoreV1Api

    core = CoreV1Api(api_client)
    options: dict[str, Any] = {
        "limit": PAGE,
        "field_selector": NOT_FINISHED,
        "_preload_content": False,
        "_request_timeout": 60,
        "_headers": {"Accept": PARTIAL_METADATA},
    }

    def page(namespace: str | None, token: str | None) -> tuple[list[str], str | None]:
        response: Any  # the raw urllib3 response (_preload_content=False)
        if namespace is None:
            response = core.list_pod_for_all_namespaces(_continue=token, **options)
        else:
            response = core.list_namespaced_pod(namespace, _continue=token, **options)
        try:
            data = json.loads(response.data)
        finally:
            response.release_conn()
        uids = [
            str((item.get("metadata") or {}).get("uid") or "") for item in data.get("items") or ()
        ]
        return [uid for uid in uids if uid], (data.get("metadata") or {}).get("continue") or None

    def list_uids() -> set[str]:
        uids: set[str] = set()
        for namespace in watch_namespaces or (None,):
            token: str | None = None
            while True:
                found, token = page(namespace, token)
                uids.update(found)
                if token is None:
                    break
        return uids

    return list_uids


def register(kopf_registry: kopf.OperatorRegistry, watcher: PodWatcher) -> None:
    """Add the pod event handler. Run :meth:`PodWatcher.run` as a background task, and
    subscribe the store to the policy view: ``registry.subscribe(store.policy_changed)``
    (``app.build_reporting`` does both).
    """

    async def on_pod(event: Mapping[str, Any], **_: Any) -> None:
        watcher.handle(event)  # returns None: kopf stores nothing on the pod

    kopf.on.event(
        group="", version="v1", plural="pods", id="pod-compliance", registry=kopf_registry
    )(on_pod)
