"""The mutating admission webhook for Pod CREATE: a thin adapter around the engine.

kopf serves ``POST /<id>`` and calls only the handler with that id, so every webhook
configuration must point at ``/`` + :data:`WEBHOOK_ID`. The handler decides with
:func:`admit` (pure: registry lookup and ``engine.mutate_pod`` on copies of the pod) and, when
something changed, appends a function to ``patch.fns`` that puts the mutated ``metadata`` and
``spec`` into kopf's copy of the body; kopf diffs that copy against the request into an
RFC 6902 JSONPatch, so appended env entries become plain ``add`` operations and nothing else
in the pod is touched.

Manners: exempt or unwatched namespaces, opted-out pods, mirror pods and audit-mode policies
are skipped. A dry-run request gets exactly the same patch (we have no side effects); it is
counted in the metrics like any request, and logged as "would inject". Any exception of ours
is caught: the pod is allowed unmutated, the error is logged and counted (result="error").
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import kopf

from .admission_metrics import AdmissionMetrics, Result
from .devwebhook import DevProbe
from .engine import (
    PodTooLarge,
    SpecError,
    State,
    check_bounds,
    evaluate_pod,
    mutate_pod,
    mutation_skip_reason,
)
from .registry import Registry

__all__ = [
    "WEBHOOK_ID",
    "WEBHOOK_PATH",
    "Admission",
    "PodWebhook",
    "ServingWebhookServer",
    "admit",
    "register",
]

logger = logging.getLogger(__name__)

WEBHOOK_ID: Final = "gomemlimit-pod-mutate"
WEBHOOK_PATH: Final = f"/{WEBHOOK_ID}"

_WARN_STATES: Final = {State.INVALID, State.EXCEEDS_LIMIT, State.NO_MEMORY_LIMIT}


@dataclass(frozen=True)
class Admission:
    """The decision for one pod. ``metadata``/``spec`` are the mutated copies when mutated."""

    result: Result
    reason: str
    policy: str | None = None
    metadata: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    injected: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _skip(reason: str, policy: str | None = None) -> Admission:
    return Admission("skipped", reason, policy)


def admit(
    pod: Mapping[str, Any],
    *,
    registry: Registry,
    exempt: Callable[[str], bool] = lambda namespace: False,
) -> Admission:
    """Decide what the webhook does with a pod being created. Pure apart from reading the
    registry; never modifies ``pod``."""
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    if not namespace:
        return _skip("the request object has no namespace")
    if exempt(namespace):
        return _skip(f"namespace {namespace} is exempt")
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    policy = registry.governing(namespace, labels)
    if policy is None:
        return _skip("no policy governs the pod")
    skip = mutation_skip_reason(metadata, policy)  # audit mode, opted out, mirror pod
    if skip is not None:
        return _skip(skip, policy.ref)

    try:
        check_bounds(pod.get("spec") or {})  # before copying: the copy is the larger cost
        new_metadata = copy.deepcopy(dict(metadata))
        new_spec = copy.deepcopy(dict(pod.get("spec") or {}))
        result = mutate_pod(new_metadata, new_spec, policy)
        reports = evaluate_pod(new_metadata, new_spec, policy)
    except SpecError as exc:
        message = f"gomemlimit: not injected: {exc.field}: {exc.problem}"
        outcome: Result = "too_large" if isinstance(exc, PodTooLarge) else "skipped"
        return Admission(outcome, str(exc), policy.ref, warnings=(message,))
    warnings = tuple(
        f"gomemlimit: container {report.container}: {report.reason}"
        for report in reports
        if report.policy is not None and report.state in _WARN_STATES
    )
    if not result.changed:
        return Admission("unchanged", result.reason, policy.ref, warnings=warnings)
    return Admission(
        "mutated",
        result.reason,
        policy.ref,
        metadata=new_metadata,
        spec=new_spec,
        injected=result.injected,
        warnings=warnings,
    )


def _put(metadata: dict[str, Any], spec: dict[str, Any]) -> Callable[[kopf.RawBody], None]:
    """A kopf patch function: cannot fail, and is the same however often kopf calls it.

    ``metadata`` and ``spec`` are admit()'s own copies, used only here: kopf diffs the body
    they are put into and never changes them, so they need no further copy."""

    def apply(body: Any) -> None:  # kopf.RawBody, a TypedDict
        body["metadata"] = metadata
        body["spec"] = spec

    return apply


def _describe(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''}<generated>"
    return f"{metadata.get('namespace') or '?'}/{name}"


class PodWebhook:
    """The kopf mutate handler, with its collaborators injected."""

    def __init__(
        self,
        registry: Registry,
        *,
        exempt: Callable[[str], bool],
        metrics: AdmissionMetrics,
        ensure_namespace: Callable[[str], Awaitable[None]] | None = None,
        probe: DevProbe | None = None,
    ) -> None:
        self.registry = registry
        self.exempt = exempt
        self.metrics = metrics
        self.ensure_namespace = ensure_namespace
        self.probe = probe

    async def __call__(
        self,
        body: Mapping[str, Any],
        patch: kopf.Patch,
        dryrun: bool,
        warnings: list[str],
        **_: Any,
    ) -> None:
        started = time.perf_counter()
        result: Result | None = None  # None: not counted (the --dev probe)
        try:
            pod = dict(body)  # admit() reads it and copies only what it changes
            annotations = (pod.get("metadata") or {}).get("annotations") or {}
            if self.probe is not None and self.probe.matches(annotations, dryrun):
                self.probe.seen()
                return
            namespace = str((pod.get("metadata") or {}).get("namespace") or "")
            if namespace and self.ensure_namespace is not None and not self.exempt(namespace):
                try:
                    await self.ensure_namespace(namespace)
                except Exception as exc:  # fall back to the name-only labels
                    logger.warning("Could not look up namespace %s: %s", namespace, exc)
            admission = admit(pod, registry=self.registry, exempt=self.exempt)
            if admission.result == "mutated":
                assert admission.metadata is not None
                assert admission.spec is not None
                patch.fns.append(_put(admission.metadata, admission.spec))
                logger.info(
                    "%s %s: %s %s",
                    "Dry run: would inject into" if dryrun else "Injected into",
                    _describe(pod),
                    admission.reason,
                    admission.injected,
                )
            else:
                logger.debug("Pod %s %s: %s", _describe(pod), admission.result, admission.reason)
            warnings.extend(admission.warnings)
            result = admission.result
        except Exception:
            result = "error"
            patch.fns.clear()
            logger.exception(
                "Admission of pod %s failed; allowing it unmutated.", _describe(dict(body))
            )
        finally:
            if result is not None:
                self.metrics.observe(result, time.perf_counter() - started)


class ServingWebhookServer(kopf.WebhookServer):
    """kopf's WebhookServer, telling us each time it starts serving (with its client config)."""

    def __init__(self, *, on_serving: Callable[[Mapping[str, Any]], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_serving = on_serving

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in super().__call__(fn):
            self._on_serving(client_config)
            yield client_config


def register(kopf_registry: kopf.OperatorRegistry, webhook: PodWebhook) -> None:
    """``@kopf.on.mutate`` for Pod CREATE under the fixed id :data:`WEBHOOK_ID`."""

    # A plain coroutine function: kopf runs anything else (even an object with an async
    # __call__) in a thread pool, where the coroutine would never be awaited.
    async def mutate_pod_handler(**kwargs: Any) -> None:
        await webhook(**kwargs)

    kopf.on.mutate("", "v1", "pods", id=WEBHOOK_ID, operations=["CREATE"], registry=kopf_registry)(
        mutate_pod_handler
    )
