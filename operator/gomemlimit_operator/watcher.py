"""The pod compliance watcher: kopf pod events into the record store, and its housekeeping.

Pods are watched with ``@kopf.on.event`` only; the handler returns None, so kopf writes
nothing onto any pod (no annotation, no finalizer, no status). Each event is reduced at once
to the engine's :class:`~.engine.PodFacts`; the body is not kept.

* ADDED/MODIFIED and listing events (type None) record the pod; DELETED forgets it. Pods
  that finished (phase Succeeded or Failed) are forgotten too: their containers no longer run.
* Every pod of a watched namespace is recorded, including kube-system and the operator's
  own namespace: exemption is a webhook matter. Those pods show as ``unmanaged`` unless a
  policy selects them, which is then worth seeing.
* Policy changes reach the store through the registry listener (:meth:`PodStore.policy_changed`)
  and are re-evaluated here, from the records, in chunks that yield to the event loop: no API
  call and no pod event needed. A full pass every ``full_interval`` also catches namespace
  label changes (the registry does not report them) and stamps the time of the last full
  evaluation, which a stalled watcher stops advancing.

Only the active replica (the kopf peering leader, whose watch streams run) does full passes;
a paused replica's store is frozen and :mod:`metrics` hides its pod series.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import kopf

from .engine import SpecError, pod_facts
from .records import PodStore

__all__ = ["TERMINAL_PHASES", "PodWatcher", "register"]

logger = logging.getLogger(__name__)

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


class PodWatcher:
    """Applies pod events to a :class:`PodStore` and keeps it evaluated.

    ``watches(namespace)``: whether pods of this namespace are handled (the operator's
    ``--watch-namespace`` setting; kopf may already restrict its watch to them).
    ``is_active()``: whether this replica's watch streams run (the peering leader).
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


def register(kopf_registry: kopf.OperatorRegistry, watcher: PodWatcher) -> None:
    """Add the pod event handler. Run :meth:`PodWatcher.run` as a background task, and
    subscribe the store to the policy registry: ``registry.subscribe(store.policy_changed)``.
    """

    async def on_pod(event: Mapping[str, Any], **_: Any) -> None:
        watcher.handle(event)  # returns None: kopf stores nothing on the pod

    kopf.on.event(
        group="", version="v1", plural="pods", id="pod-compliance", registry=kopf_registry
    )(on_pod)
