"""Each policy's status, written through the status subresource.

The status itself comes from :func:`gomemlimit_operator.core.status.build_status`.
:class:`PolicyStatusWriter` keeps what it last saw or wrote per policy and writes a status
only when it differs, at most once per ``interval`` per policy, and only while this replica
is the status writer (``is_leader``). Status-only writes do not change ``generation``, and the
policy handlers only read, so a write never makes the operator re-handle a policy in a loop.

Constructor arguments (the composition root, ``app.build_reporting``, passes both):

* ``counts_provider(policy_ref) -> (matched_pods, governed_containers, ContainerCounts) | None``
  (``policy_ref`` as :attr:`api.Policy.ref`); None means "not observed yet" and leaves
  ``Compliant`` Unknown and the count fields as they are.
* ``is_leader() -> bool``: only the leader writes (the operator also waits until its pod
  records are synced); others keep tracking the live status from watch events, so a new leader
  writes only what differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gomemlimit_operator.core.api import (
    GROUP,
    PLURALS,
    VERSION,
    Policy,
)
from gomemlimit_operator.core.policy_view import PolicyKey
from gomemlimit_operator.core.status import (
    Counts,
    build_status,
    noncompliant_count,
    normalized_status,
)

__all__ = [
    "FIELD_MANAGER",
    "CountsProvider",
    "PolicyStatusWriter",
    "StatusPatcher",
    "build_status",
    "kubernetes_status_patcher",
    "noncompliant_count",
]

logger = logging.getLogger(__name__)


CountsProvider = Callable[[str], Counts | None]
StatusPatcher = Callable[[PolicyKey, dict[str, Any]], None]
"""Writes ``{"status": ...}`` as a merge patch to the status subresource (synchronous)."""

FIELD_MANAGER: Final = "gomemlimit-operator"
"""The manager of the status fields in ``metadata.managedFields``, whichever replica wrote."""


class PolicyGoneError(Exception):
    """The patcher found no such object (HTTP 404)."""


def _covers(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether the live status already has every field of ``desired``."""
    normalized = normalized_status(live)
    if normalized is None:
        return False
    return all(normalized.get(key) == value for key, value in desired.items())


@dataclass
class _Tracked:
    generation: int | None
    policy: Policy | None
    problem: str | None
    live: dict[str, Any] | None
    last_attempt: float | None = None


class PolicyStatusWriter:
    """Keeps every known policy's status up to date, without write storms."""

    def __init__(
        self,
        patcher: StatusPatcher,
        *,
        interval: float = 5.0,
        counts_provider: CountsProvider | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._patcher = patcher
        self.interval = interval
        self.counts_provider = counts_provider
        self.is_leader = is_leader
        self._clock = clock
        self._tracked: dict[PolicyKey, _Tracked] = {}
        self._wake: asyncio.Event | None = None
        self.writes = 0

    # --- input from the policy handlers -----------------------------------------------------

    def observe(
        self,
        key: PolicyKey,
        *,
        generation: int | None,
        policy: Policy | None,
        problem: str | None,
        live_status: Mapping[str, Any] | None,
    ) -> None:
        """A policy object was seen (listed, added or modified) with this status on it."""
        old = self._tracked.get(key)
        self._tracked[key] = _Tracked(
            generation=generation,
            policy=policy,
            problem=problem,
            live=None if live_status is None else dict(live_status),
            last_attempt=None if old is None else old.last_attempt,
        )
        self.wake()

    def forget(self, key: PolicyKey) -> None:
        self._tracked.pop(key, None)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- what to write -------------------------------------------------------------------------

    def desired(self, key: PolicyKey) -> dict[str, Any] | None:
        tracked = self._tracked.get(key)
        if tracked is None:
            return None
        counts = None
        if tracked.problem is None and self.counts_provider is not None:
            counts = self.counts_provider(key.ref)
        return build_status(
            generation=tracked.generation,
            policy=tracked.policy,
            problem=tracked.problem,
            counts=counts,
            previous=tracked.live,
        )

    def due(self) -> tuple[list[tuple[PolicyKey, dict[str, Any]]], float | None]:
        """(writes allowed now, seconds until the next throttled write or None)."""
        now = self._clock()
        ready: list[tuple[PolicyKey, dict[str, Any]]] = []
        wait: float | None = None
        for key in sorted(self._tracked):
            status = self.desired(key)
            tracked = self._tracked[key]
            if status is None or _covers(tracked.live, status):
                continue
            if tracked.last_attempt is not None and now - tracked.last_attempt < self.interval:
                remaining = self.interval - (now - tracked.last_attempt)
                wait = remaining if wait is None else min(wait, remaining)
                continue
            ready.append((key, status))
        return ready, wait

    # --- writing -------------------------------------------------------------------------------

    async def flush(self) -> float | None:
        """Write every status that is due. Returns the delay until the next due write."""
        if not self.is_leader():
            return None
        ready, wait = self.due()
        for key, status in ready:
            if not self.is_leader():  # lost the lease (or the records) during this round
                return None
            tracked = self._tracked.get(key)
            if tracked is None:
                continue
            tracked.last_attempt = self._clock()
            try:
                await asyncio.to_thread(self._patcher, key, {"status": status})
            except PolicyGoneError:
                self.forget(key)
                continue
            except Exception as exc:
                logger.warning("Could not write the status of %s: %s", key.ref, exc)
                wait = self.interval if wait is None else min(wait, self.interval)
                continue
            self.writes += 1
            current = self._tracked.get(key)
            if current is not None:
                current.live = {**(current.live or {}), **status}
        return wait

    async def run(self) -> None:
        """Forever: write what is due; wake up on changes, throttled writes, and every interval
        (to pick up new counts)."""
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            try:
                wait = await self.flush()
            except Exception:  # never let a bug stop the status loop
                logger.exception("Status writing failed.")
                wait = None
            timeout = self.interval if wait is None else max(0.05, min(wait, self.interval))
            # Not asyncio.wait_for: it spawns a task per call, which kopf's shutdown would
            # wait for as a "hung" task.
            timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()


def kubernetes_status_patcher(api_client: Any) -> StatusPatcher:
    """A StatusPatcher using the kubernetes client's CustomObjectsApi (merge patch)."""
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    api = CustomObjectsApi(api_client)

    def patch(key: PolicyKey, body: dict[str, Any]) -> None:
        plural = PLURALS[key.kind]
        try:
            if key.namespace is None:
                api.patch_cluster_custom_object_status(
                    GROUP,
                    VERSION,
                    plural,
                    key.name,
                    body,
                    field_manager=FIELD_MANAGER,
                    _request_timeout=30,
                )
            else:
                api.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    key.namespace,
                    plural,
                    key.name,
                    body,
                    field_manager=FIELD_MANAGER,
                    _request_timeout=30,
                )
        except ApiException as exc:
            if exc.status == 404:
                raise PolicyGoneError(key.ref) from None
            raise

    return patch
