"""Leader election with a ``coordination.k8s.io/v1`` Lease.

Every replica serves the webhook and watches policies, namespaces and pods (kopf runs
standalone everywhere). The Lease only decides which one replica writes policy status and
exports the pod-derived metrics.

Why not kopf peering: a paused (non-leader) kopf replica pauses *all* its watch streams, so
its webhook would answer with a policy index frozen at the time it was paused.

Why not ``kubernetes.leaderelection`` (client 37): its ``LeaderElection.run()`` blocks a
thread in ``time.sleep`` loops with no way to stop it, so it can neither be cancelled at
shutdown nor release the lease; ``LeaseLock`` builds its API from the global default client
rather than the operator's credentials; its calls have no request timeout, so a hung request
keeps a replica believing it leads past the renew deadline; ``Config`` calls ``sys.exit`` on
bad values; and it logs every follower poll at INFO.

The protocol is client-go's (``k8s.io/client-go/tools/leaderelection``):

* A candidate GETs the Lease. If there is none it creates one naming itself. If another
  identity holds it, the candidate waits until the record has not changed for the record's
  ``leaseDurationSeconds``, measured on its *own* monotonic clock from when it first saw that
  record (no clock comparison between machines), then takes it over with an update that
  carries the ``resourceVersion`` it read: of two candidates, only one update succeeds (the
  other gets 409 Conflict).
* The holder renews every ``renew_interval``; after a failed renewal it retries every
  ``retry_interval``. It considers itself the leader only until ``renew_deadline`` after the
  start of its last successful renewal, and ``renew_deadline`` < ``lease_duration``, so it has
  stopped acting before anyone else may take over, even if its requests hang.
* On a clean shutdown the holder releases the Lease (empty ``holderIdentity``,
  ``leaseDurationSeconds: 1``), so a follower takes over at its next poll instead of waiting
  for the lease to expire.

A replica that loses the lease keeps running as a follower and may win it again later.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from gomemlimit_operator.runtime.apierrors import describe as describe_api_error

__all__ = [
    "LEASE_NAME",
    "ElectionTiming",
    "KubernetesLeaseClient",
    "LeaderElector",
    "LeaseClient",
    "LeaseConflictError",
    "LeaseRecord",
]

logger = logging.getLogger(__name__)

LEASE_NAME: Final = "gomemlimit-operator"


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that leader election uses."""

    holder: str | None
    duration_seconds: int | None
    acquire_time: datetime.datetime | None
    renew_time: datetime.datetime | None
    transitions: int = 0
    resource_version: str | None = None
    """Of the object read or written; an update sends it as its precondition."""

    def fingerprint(self) -> tuple[object, ...]:
        """What changes when the holder renews (followers restart their wait on a change)."""
        return (self.resource_version, self.holder, self.renew_time)


class LeaseConflictError(Exception):
    """Someone else created or changed the Lease first (HTTP 409), or it vanished (404)."""


class LeaseClient(Protocol):
    """Blocking access to one Lease object."""

    def get(self) -> LeaseRecord | None:
        """The Lease, or None when it does not exist."""

    def create(self, record: LeaseRecord) -> LeaseRecord:
        """Create it; raise :class:`LeaseConflictError` if it exists."""

    def update(self, record: LeaseRecord) -> LeaseRecord:
        """Replace it if its resourceVersion is still ``record.resource_version``; else raise
        :class:`LeaseConflictError`."""


@dataclass(frozen=True)
class ElectionTiming:
    """Seconds. client-go's defaults are 15, 10 and 2 (it renews at every retry)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    renew_interval: float = 5.0
    retry_interval: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < renew_interval < renew_deadline < lease_duration")
        if not 0 < self.retry_interval < self.renew_deadline:
            raise ValueError("need 0 < retry_interval < renew_deadline")

    @classmethod
    def for_lease(cls, lease_duration: float) -> ElectionTiming:
        """Renew every third of the lease, give up renewing at two thirds, poll every
        fifth (at most 2 s): 15 s gives 5 s, 10 s and 2 s."""
        return cls(
            lease_duration=lease_duration,
            renew_deadline=lease_duration * 2 / 3,
            renew_interval=lease_duration / 3,
            retry_interval=min(2.0, lease_duration / 5),
        )

    @property
    def request_timeout(self) -> float:
        """Of each API request: a hung request must not outlast the renew deadline."""
        return max(1.0, min(5.0, self.renew_deadline / 2))


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Campaigns for the Lease through ``client`` and says whether this replica leads.

    ``is_leader()`` is cheap and safe from any thread. ``run()`` campaigns forever (cancel it
    to stop); ``release()`` then gives the Lease up. ``on_change(leading)`` is called in the
    event loop when leadership is won or lost.
    """

    def __init__(
        self,
        client: LeaseClient,
        identity: str,
        *,
        timing: ElectionTiming | None = None,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = _utcnow,
        description: str = LEASE_NAME,
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self.client = client
        self.identity = identity
        self.timing = timing or ElectionTiming()
        self.on_change = on_change
        self.description = description
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()  # one API round at a time; release waits for it
        self._leading = False
        self._valid_until = 0.0
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._stopped = False
        self._announced = False
        self._noted_holder: str | None = None

    # --- state -----------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while this replica holds the lease and its last renewal is recent enough."""
        return self._leading and self._clock() < self._valid_until

    @property
    def holder(self) -> str | None:
        """The holder in the last Lease record seen."""
        observed = self._observed
        return None if observed is None else observed.holder

    def _observe(self, record: LeaseRecord) -> None:
        if self._observed is None or record.fingerprint() != self._observed.fingerprint():
            self._observed_at = self._clock()
        self._observed = record

    def _won(self, record: LeaseRecord, started: float) -> None:
        self._observed, self._observed_at = record, started
        self._valid_until = started + self.timing.renew_deadline
        self._leading = True

    def _lost(self) -> None:
        self._leading = False

    # --- one round -------------------------------------------------------------------------

    def _timestamp(self) -> datetime.datetime:
        now = self._now()
        # The API server parses MicroTime with exactly six fractional digits, and
        # datetime.isoformat() drops them when the microsecond is 0.
        return now if now.microsecond else now.replace(microsecond=1)

    def try_acquire_or_renew(self) -> bool:
        """One blocking round: read the Lease, then take or renew it if allowed.

        Returns whether this replica holds the Lease after the round. API errors other than
        conflicts propagate; leadership then lapses at the renew deadline.
        """
        with self._lock:
            if self._stopped:
                return False
            started = self._clock()
            duration = max(1, round(self.timing.lease_duration))
            record = self.client.get()
            now = self._timestamp()
            if record is None:
                try:
                    created = self.client.create(LeaseRecord(self.identity, duration, now, now, 0))
                except LeaseConflictError:
                    return False
                self._won(created, started)
                return True
            self._observe(record)
            mine = record.holder == self.identity
            if record.holder and not mine:
                lease = record.duration_seconds or self.timing.lease_duration
                if self._observed_at + lease > self._clock():
                    self._lost()
                    return False
            wanted = LeaseRecord(
                holder=self.identity,
                duration_seconds=duration,
                acquire_time=record.acquire_time if mine and record.acquire_time else now,
                renew_time=now,
                transitions=record.transitions + (0 if mine else 1),
                resource_version=record.resource_version,
            )
            try:
                updated = self.client.update(wanted)
            except LeaseConflictError:
                # Someone wrote the Lease since we read it: maybe a new holder. Step down at
                # once; if it is still ours, the next round takes it back.
                self._lost()
                return False
            self._won(updated, started)
            return True

    def release(self) -> bool:
        """Stop campaigning; if this replica leads, give the Lease up. Blocking.

        Returns whether a held Lease was released. Afterwards ``is_leader()`` is False and
        no further round runs, even one that was in flight in another thread.
        """
        with self._lock:
            self._stopped = True
            leading, self._leading = self._leading, False
            observed = self._observed
            if not leading or observed is None or observed.holder != self.identity:
                return False
            now = self._timestamp()
            released = replace(
                observed, holder=None, duration_seconds=1, acquire_time=now, renew_time=now
            )
            try:
                self.client.update(released)
            except LeaseConflictError:
                return False
            return True

    # --- the campaign ----------------------------------------------------------------------

    def _announce(self) -> None:
        leading = self.is_leader()
        if leading == self._announced:
            return
        self._announced = leading
        if leading:
            logger.info("This replica (%s) now leads (%s).", self.identity, self.description)
        elif self._stopped:
            logger.info("This replica (%s) stopped leading (%s).", self.identity, self.description)
        else:
            logger.warning(
                "This replica (%s) is no longer the leader (%s); the holder is %s.",
                self.identity,
                self.description,
                self.holder or "nobody",
            )
        if self.on_change is not None:
            try:
                self.on_change(leading)
            except Exception:
                logger.exception("A leadership change callback failed.")

    def _note_holder(self) -> None:
        """Log, once per holder, who leads while this replica follows."""
        holder = self.holder
        if self._announced or holder == self._noted_holder:
            return
        self._noted_holder = holder
        if holder is not None and holder != self.identity:
            logger.info("Following: %s holds the lease (%s).", holder, self.description)

    async def run(self) -> None:
        """Campaign forever: renew while leading, poll while following."""
        failures = 0
        while True:
            try:
                held = await asyncio.to_thread(self.try_acquire_or_renew)
                failures = 0
            except Exception as exc:
                held = False
                failures += 1
                level = logging.WARNING if failures == 1 or failures % 30 == 0 else logging.DEBUG
                logger.log(
                    level,
                    "Leader election (%s) failed: %s",
                    self.description,
                    describe_api_error(exc),
                )
            self._announce()
            self._note_holder()
            await asyncio.sleep(self.timing.renew_interval if held else self.timing.retry_interval)

    async def stop(self, timeout: float = 5.0) -> bool:
        """:meth:`release` from the event loop, waiting at most ``timeout`` seconds."""
        try:
            released = await asyncio.wait_for(asyncio.to_thread(self.release), timeout)
        except Exception as exc:
            logger.warning(
                "Could not release the lease (%s): %s", self.description, describe_api_error(exc)
            )
            released = False
        self._announce()
        if released:
            logger.info("Released the lease (%s).", self.description)
        return released


# -------------------------------------------------------------------------------------------
# The Kubernetes API
# -------------------------------------------------------------------------------------------


class KubernetesLeaseClient:
    """:class:`LeaseClient` on ``coordination.k8s.io/v1`` through the kubernetes client.

    Needs ``get``, ``create`` and ``update`` on ``leases`` in ``namespace``.
    """

    LABELS: Final = {"app.kubernetes.io/name": "gomemlimit-operator"}

    def __init__(
        self, api_client: Any, namespace: str, name: str = LEASE_NAME, *, timeout: float = 5.0
    ) -> None:
        from kubernetes.client import CoordinationV1Api

        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self._api = CoordinationV1Api(api_client)

    def _body(self, record: LeaseRecord) -> Any:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta

        return V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels=dict(self.LABELS),
                resource_version=record.resource_version,
            ),
            spec=V1LeaseSpec(
                holder_identity=record.holder,
                lease_duration_seconds=record.duration_seconds,
                acquire_time=record.acquire_time,
                renew_time=record.renew_time,
                lease_transitions=record.transitions,
            ),
        )

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec = lease.spec
        return LeaseRecord(
            holder=(spec.holder_identity or None) if spec else None,
            duration_seconds=spec.lease_duration_seconds if spec else None,
            acquire_time=spec.acquire_time if spec else None,
            renew_time=spec.renew_time if spec else None,
            transitions=(spec.lease_transitions or 0) if spec else 0,
            resource_version=lease.metadata.resource_version if lease.metadata else None,
        )

    def get(self) -> LeaseRecord | None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._record(lease)

    def create(self, record: LeaseRecord) -> LeaseRecord:
        from kubernetes.client.exceptions import ApiException

        body = self._body(replace(record, resource_version=None))
        try:
            lease = self._api.create_namespaced_lease(
                self.namespace, body, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflictError(f"{self.namespace}/{self.name} exists") from None
            raise
        return self._record(lease)

    def update(self, record: LeaseRecord) -> LeaseRecord:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._api.replace_namespaced_lease(
                self.name, self.namespace, self._body(record), _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise LeaseConflictError(f"{self.namespace}/{self.name} changed") from None
            raise
        return self._record(lease)
