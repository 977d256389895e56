"""The policy controller: keeps the shared PolicyView in step with the cluster.

:class:`PolicyReconciler` turns policy and namespace objects (from kopf watch events and from
explicit LISTs) into registry entries: valid policies via ``registry.set_policy``, invalid ones
via ``registry.set_invalid`` with the problem naming the field, and namespace labels.

Why explicit LISTs next to kopf's watches: kopf tells no one when its initial listing is
complete, and after a reconnect it re-lists without reporting objects deleted meanwhile. So
:func:`load_and_resync` LISTs once at start (readiness waits for it) and then periodically.
Events always win over a LIST: every event stamps its key with a counter, and a LIST only
applies to (or removes) keys no event touched since that LIST began.

:func:`register` adds ``@kopf.on.event`` handlers (they return None and write nothing onto the
objects; status goes through :mod:`.status_writer`). Invalid specs also get one Warning Event
per generation and problem.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import kopf

from gomemlimit_operator.core.api import (
    CLUSTER_KIND,
    GROUP,
    NAMESPACED_KIND,
    PLURALS,
    VERSION,
    Policy,
    PolicyError,
    parse_policy,
)
from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView
from gomemlimit_operator.runtime.apierrors import describe as describe_api_error
from gomemlimit_operator.runtime.status_writer import PolicyStatusWriter

__all__ = [
    "INVALID_SPEC_REASON",
    "KubernetesLister",
    "PolicyOutcome",
    "PolicyReconciler",
    "load_and_resync",
    "namespace_ensurer",
    "policy_key",
    "register",
]

logger = logging.getLogger(__name__)

INVALID_SPEC_REASON: Final = "InvalidSpec"
RESYNC_SECONDS: Final = 300.0
RETRY_SECONDS: Final = 2.0

_DELETED: Final = "DELETED"


@dataclass(frozen=True)
class PolicyOutcome:
    """What handling one policy object did. ``report`` is set when a Warning should be posted."""

    key: PolicyKey
    policy: Policy | None
    error: PolicyError | None
    report: bool = False

    @property
    def problem(self) -> str | None:
        return None if self.error is None else f"{self.error.field}: {self.error.problem}"


def policy_key(obj: Mapping[str, Any]) -> PolicyKey:
    kind = str(obj.get("kind") or "")
    metadata = obj.get("metadata") or {}
    namespace = None if kind == CLUSTER_KIND else str(metadata.get("namespace") or "")
    return PolicyKey(kind, namespace, str(metadata.get("name") or ""))


class PolicyReconciler:
    """Policy and namespace objects in, registry entries (and status observations) out.

    Methods are called from the event loop (kopf handlers, the loader); the registry itself is
    thread-safe for readers in other threads.
    """

    def __init__(
        self,
        registry: PolicyView,
        status: PolicyStatusWriter | None = None,
        *,
        watches: Callable[[str], bool] = lambda namespace: True,
    ) -> None:
        self.registry = registry
        self.status = status
        self._watches = watches
        self._counter = 0
        self._touched: dict[tuple[str, object], int] = {}
        self._namespaces: set[str] = set()
        self._policies: set[PolicyKey] = set()
        self._reported: dict[PolicyKey, tuple[int | None, str]] = {}
        self._active: list[int] = []
        self.loaded = False

    # --- events --------------------------------------------------------------------------

    def _touch(self, kind: str, key: object) -> None:
        self._counter += 1
        self._touched[(kind, key)] = self._counter

    def policy_event(self, event_type: str | None, obj: Mapping[str, Any]) -> PolicyOutcome:
        key = policy_key(obj)
        self._touch("policy", key)
        if event_type == _DELETED:
            self._remove_policy(key)
            return PolicyOutcome(key, None, None)
        return self._apply_policy(key, obj)

    def namespace_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name:
            return
        self._touch("namespace", name)
        if event_type == _DELETED:
            self._namespaces.discard(name)
            self.registry.remove_namespace(name)
        else:
            self._apply_namespace(name, obj)

    # --- listings ------------------------------------------------------------------------

    def begin_listing(self) -> int:
        """Call right before a LIST or GET; pass the token to :meth:`apply_listing` (or
        :meth:`apply_namespace_lookup`), or to :meth:`end_listing` if the request failed."""
        self._active.append(self._counter)
        return self._counter

    def end_listing(self, token: int) -> None:
        self._active.remove(token)
        # Stamps older than every listing still in flight can never matter again.
        floor = min(self._active, default=self._counter)
        self._touched = {k: v for k, v in self._touched.items() if v > floor}

    def apply_listing(
        self,
        token: int,
        policies: Iterable[Mapping[str, Any]],
        namespaces: Iterable[Mapping[str, Any]],
    ) -> list[PolicyOutcome]:
        """Make the index match a LIST taken after ``token``, except where events were newer."""

        def fresh(kind: str, key: object) -> bool:
            return self._touched.get((kind, key), 0) <= token

        listed_namespaces: set[str] = set()
        for obj in namespaces:
            name = str((obj.get("metadata") or {}).get("name") or "")
            listed_namespaces.add(name)
            if name and fresh("namespace", name):
                self._apply_namespace(name, obj)
        for name in list(self._namespaces - listed_namespaces):
            if fresh("namespace", name):
                self._namespaces.discard(name)
                self.registry.remove_namespace(name)

        outcomes: list[PolicyOutcome] = []
        listed: set[PolicyKey] = set()
        for obj in policies:
            key = policy_key(obj)
            listed.add(key)
            if fresh("policy", key):
                outcomes.append(self._apply_policy(key, obj))
        for key in sorted(self._policies - listed):
            if fresh("policy", key):
                self._remove_policy(key)
        self.end_listing(token)
        self.loaded = True
        return outcomes

    # --- lookups -------------------------------------------------------------------------

    def knows_namespace(self, name: str) -> bool:
        return name in self._namespaces

    def apply_namespace_lookup(self, token: int, obj: Mapping[str, Any] | None, name: str) -> None:
        """A single GET of a namespace (e.g. by the webhook), applied unless an event was newer."""
        newer = self._touched.get(("namespace", name), 0) > token
        self.end_listing(token)
        if newer:
            return
        if obj is None:
            self._namespaces.discard(name)
            self.registry.remove_namespace(name)
        else:
            self._apply_namespace(name, obj)

    def needs_namespace_labels(self) -> bool:
        """Whether any valid policy selects namespaces by label (else labels don't matter)."""
        return any(p.namespace_selector is not None for p in self.registry.policies())

    # --- internals -----------------------------------------------------------------------

    def _apply_namespace(self, name: str, obj: Mapping[str, Any]) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        self._namespaces.add(name)
        self.registry.set_namespace(name, {str(k): str(v) for k, v in labels.items()})

    def _remove_policy(self, key: PolicyKey) -> None:
        self._policies.discard(key)
        self._reported.pop(key, None)
        self.registry.remove_policy(key)
        if self.status is not None:
            self.status.forget(key)

    def _apply_policy(self, key: PolicyKey, obj: Mapping[str, Any]) -> PolicyOutcome:
        if key.namespace is not None and not self._watches(key.namespace):
            return PolicyOutcome(key, None, None)
        metadata = obj.get("metadata") or {}
        generation = metadata.get("generation")
        generation = generation if isinstance(generation, int) else None
        self._policies.add(key)
        try:
            policy = parse_policy(obj)
        except PolicyError as exc:
            outcome = PolicyOutcome(key, None, exc)
            assert outcome.problem is not None
            self.registry.set_invalid(key, outcome.problem)
            report = self._reported.get(key) != (generation, outcome.problem)
            self._reported[key] = (generation, outcome.problem)
            outcome = PolicyOutcome(key, None, exc, report)
        else:
            self.registry.set_policy(policy)
            self._reported.pop(key, None)
            outcome = PolicyOutcome(key, policy, None)
        if self.status is not None:
            live = obj.get("status")
            self.status.observe(
                key,
                generation=generation,
                policy=outcome.policy,
                problem=outcome.problem,
                live_status=live if isinstance(live, Mapping) else None,
            )
        return outcome


# -------------------------------------------------------------------------------------------
# The LISTs
# -------------------------------------------------------------------------------------------


class KubernetesLister:
    """Synchronous LIST/GET calls through the kubernetes client (run them in a thread)."""

    def __init__(self, api_client: Any, watch_namespaces: tuple[str, ...] = ()) -> None:
        from kubernetes.client import CoreV1Api, CustomObjectsApi

        self._custom = CustomObjectsApi(api_client)
        self._core = CoreV1Api(api_client)
        self._watch_namespaces = watch_namespaces

    @staticmethod
    def _pages(fetch: Callable[[str | None], Any]) -> list[Any]:
        """All items of a paged LIST; ``fetch(continue_token)`` returns one page."""
        items: list[Any] = []
        token: str | None = None
        while True:
            page = fetch(token)
            if isinstance(page, Mapping):
                items.extend(page.get("items") or ())
                token = (page.get("metadata") or {}).get("continue")
            else:
                items.extend(page.items or ())
                token = page.metadata._continue if page.metadata is not None else None
            if not token:
                return items

    def _policies(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        plural = PLURALS[kind]

        def fetch(token: str | None) -> Any:
            if namespace is None:
                return self._custom.list_cluster_custom_object(
                    GROUP, VERSION, plural, limit=500, _continue=token, _request_timeout=60
                )
            return self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, limit=500, _continue=token, _request_timeout=60
            )

        items = self._pages(fetch)
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
        return items

    def list_policies(self) -> list[dict[str, Any]]:
        items = self._policies(CLUSTER_KIND, None)
        if not self._watch_namespaces:
            return items + self._policies(NAMESPACED_KIND, None)
        for namespace in self._watch_namespaces:
            items += self._policies(NAMESPACED_KIND, namespace)
        return items

    @staticmethod
    def _namespace(item: Any) -> dict[str, Any]:
        return {"metadata": {"name": item.metadata.name, "labels": item.metadata.labels or {}}}

    def list_namespaces(self) -> list[dict[str, Any]]:
        items = self._pages(
            lambda token: self._core.list_namespace(limit=500, _continue=token, _request_timeout=60)
        )
        return [self._namespace(item) for item in items]

    def get_namespace(self, name: str, timeout: float = 1.0) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            item = self._core.read_namespace(name, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._namespace(item)


async def load_and_resync(
    index: PolicyReconciler,
    lister: KubernetesLister,
    *,
    on_loaded: Callable[[], None] = lambda: None,
    resync_seconds: float = RESYNC_SECONDS,
) -> None:
    """LIST until it works (then call ``on_loaded``), and again every ``resync_seconds``."""
    loaded = False
    failures = 0
    while True:
        token = index.begin_listing()
        try:
            policies = await asyncio.to_thread(lister.list_policies)
            namespaces = await asyncio.to_thread(lister.list_namespaces)
        except Exception as exc:
            index.end_listing(token)
            failures += 1
            hint = ""
            if getattr(exc, "status", None) == 404:
                hint = " (are the CRDs installed? kubectl apply -f crds/)"
            level = logging.WARNING if failures == 1 or failures % 15 == 0 else logging.DEBUG
            logger.log(level, "Listing policies failed%s: %s", hint, describe_api_error(exc))
            await asyncio.sleep(RETRY_SECONDS if not loaded else min(resync_seconds, 30.0))
            continue
        failures = 0
        outcomes = index.apply_listing(token, policies, namespaces)
        if not loaded:
            loaded = True
            invalid = sum(1 for o in outcomes if o.error is not None)
            logger.info(
                "Policy index loaded: %d valid, %d invalid policies, %d namespaces.",
                len(index.registry.policies()),
                invalid,
                len(namespaces),
            )
            on_loaded()
        await asyncio.sleep(resync_seconds)


_NAMESPACE_NAME: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
"""A namespace name (an RFC 1123 label): anything else cannot exist, so it is never looked up."""


def namespace_ensurer(
    index: PolicyReconciler, lister: KubernetesLister, timeout: float = 1.0
) -> Callable[[str], Awaitable[None]]:
    """For the webhook: look up a namespace the watch has not delivered yet, if labels matter.

    A name no namespace can have (a request sent to the webhook directly, with a megabyte
    name, say) is not looked up: the GET would take the whole timeout for nothing, and hold
    one of the few threads the real lookups need.
    """

    async def ensure(name: str) -> None:
        if (
            index.knows_namespace(name)
            or not index.needs_namespace_labels()
            or not _NAMESPACE_NAME.fullmatch(name)
        ):
            return
        token = index.begin_listing()
        try:
            obj = await asyncio.wait_for(
                asyncio.to_thread(lister.get_namespace, name, timeout), timeout=timeout + 0.5
            )
        except BaseException:
            index.end_listing(token)
            raise
        index.apply_namespace_lookup(token, obj, name)

    return ensure


# -------------------------------------------------------------------------------------------
# kopf handlers
# -------------------------------------------------------------------------------------------


def register(kopf_registry: kopf.OperatorRegistry, index: PolicyReconciler) -> None:
    """Watch GoMemPolicy, ClusterGoMemPolicy and Namespace objects (read-only)."""

    async def on_policy(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return
        outcome = index.policy_event(event.get("type"), obj)
        if outcome.error is not None:
            if outcome.report:
                logger.warning("Invalid policy %s", outcome.error)
                kopf.warn(body, reason=INVALID_SPEC_REASON, message=outcome.problem or "")
        elif outcome.policy is not None:
            logger.debug("Policy %s is valid.", outcome.policy.ref)

    async def on_namespace(event: Mapping[str, Any], **_: Any) -> None:
        obj = event.get("object")
        if isinstance(obj, Mapping):
            index.namespace_event(event.get("type"), obj)

    kopf.on.event(
        GROUP, VERSION, PLURALS[NAMESPACED_KIND], id="gomempolicy-event", registry=kopf_registry
    )(on_policy)
    kopf.on.event(
        GROUP, VERSION, PLURALS[CLUSTER_KIND], id="clustergomempolicy-event", registry=kopf_registry
    )(on_policy)
    kopf.on.event("", "v1", "namespaces", id="namespace-event", registry=kopf_registry)(
        on_namespace
    )
