"""The mutating admission webhook for Pod CREATE: a thin adapter around the engine.

Two paths answer the same AdmissionReviews with the same decision (:func:`admit`):

* **The lean path** (what the API server calls): :class:`ServingWebhookServer` answers
  ``POST /`` + :data:`WEBHOOK_ID` itself, with :meth:`PodWebhook.review`. The JSON patch is the
  engine's own list of operations (``engine.plan_mutation``): the env entries and annotations
  it adds or replaces, computed from shallow copies. Nothing copies or diffs the whole pod, so
  the work per request is linear in the pod's containers and env entries.
* **kopf's path**, :meth:`PodWebhook.__call__` as a ``@kopf.on.mutate`` handler. kopf
  deep-copies the body and diffs it whole (with a 256-container pod, 80% of the time per
  request). It stays registered because kopf serves webhooks only while a handler exists,
  and it is the reference a property test compares the lean path with; nothing routes to it.

Manners: exempt or unwatched namespaces, opted-out pods, mirror pods and audit-mode policies
are skipped. A dry-run request gets exactly the same patch (we have no side effects); it is
counted in the metrics like any request, and logged as "would inject". Any exception of ours
is caught: the pod is allowed unmutated, the error is logged and counted (result="error").
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp.web
import kopf
import orjson

from gomemlimit_operator.core.api import WEBHOOK_ID, WEBHOOK_PATH
from gomemlimit_operator.core.engine import (
    PodTooLarge,
    SpecError,
    State,
    evaluate_pod,
    mutation_skip_reason,
    plan_mutation,
)
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics, Result

__all__ = [
    "WEBHOOK_PATH",
    "Admission",
    "PodWebhook",
    "ServingWebhookServer",
    "admit",
    "reachable_host",
    "register",
]

logger = logging.getLogger(__name__)


_WARN_STATES: Final = {
    State.INVALID,
    State.EXCEEDS_LIMIT,
    State.NO_MEMORY_LIMIT,
    State.UNSATISFIABLE,
}


@dataclass(frozen=True)
class Admission:
    """The decision for one pod. ``metadata``/``spec`` are the mutated copies when mutated,
    and ``operations`` the JSON patch that turns the request's pod into them."""

    result: Result
    reason: str
    policy: str | None = None
    metadata: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    operations: list[dict[str, Any]] = field(default_factory=list)
    injected: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _skip(reason: str, policy: str | None = None) -> Admission:
    return Admission("skipped", reason, policy)


def admit(
    pod: Mapping[str, Any],
    *,
    registry: PolicyView,
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
        plan = plan_mutation(metadata, pod.get("spec") or {}, policy)
        reports = evaluate_pod(plan.metadata, plan.spec, policy)
    except SpecError as exc:
        message = f"gomemlimit: not injected: {exc.field}: {exc.problem}"
        outcome: Result = "too_large" if isinstance(exc, PodTooLarge) else "skipped"
        return Admission(outcome, str(exc), policy.ref, warnings=(message,))
    warnings = tuple(
        f"gomemlimit: container {report.container}: {report.reason}"
        for report in reports
        if report.policy is not None and report.state in _WARN_STATES
    )
    result = plan.result
    if not result.changed:
        return Admission("unchanged", result.reason, policy.ref, warnings=warnings)
    return Admission(
        "mutated",
        result.reason,
        policy.ref,
        metadata=plan.metadata,
        spec=plan.spec,
        operations=plan.operations,
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


def _summary(injected: Mapping[str, Mapping[str, str]], shown: int = 3) -> str:
    """The injected values for a log line: a few containers, then how many more."""
    items = [f"{name}: {dict(values)}" for name, values in list(injected.items())[:shown]]
    if len(injected) > shown:
        items.append(f"and {len(injected) - shown} more containers")
    return "{" + ", ".join(items) + "}"


def _describe(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''}<generated>"
    return f"{metadata.get('namespace') or '?'}/{name}"


class PodWebhook:
    """The kopf mutate handler, with its collaborators injected."""

    def __init__(
        self,
        registry: PolicyView,
        *,
        exempt: Callable[[str], bool],
        metrics: AdmissionMetrics,
        ensure_namespace: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self.exempt = exempt
        self.metrics = metrics
        self.ensure_namespace = ensure_namespace

    async def decide(self, pod: Mapping[str, Any], dryrun: bool) -> Admission | None:
        """The decision for one pod being created, logged and counted. Never raises: our own
        failure is ``result="error"``. None means "answer allowed, without a patch or a count";
        this class never returns it, a subclass may (``dev.ProbeAnsweringWebhook``)."""
        started = time.perf_counter()
        try:
            namespace = str((pod.get("metadata") or {}).get("namespace") or "")
            if namespace and self.ensure_namespace is not None and not self.exempt(namespace):
                try:
                    await self.ensure_namespace(namespace)
                except Exception as exc:  # fall back to the name-only labels
                    logger.warning("Could not look up namespace %s: %s", namespace, exc)
            admission = admit(pod, registry=self.registry, exempt=self.exempt)
            if admission.result == "mutated":
                logger.info(
                    "%s %s: %s %s",
                    "Dry run: would inject into" if dryrun else "Injected into",
                    _describe(pod),
                    admission.reason,
                    _summary(admission.injected),
                )
            else:
                logger.debug("Pod %s %s: %s", _describe(pod), admission.result, admission.reason)
        except Exception:
            logger.exception("Admission of pod %s failed; allowing it unmutated.", _describe(pod))
            admission = Admission("error", "internal error")
        self.metrics.observe(admission.result, time.perf_counter() - started)
        return admission

    async def review(self, review: Mapping[str, Any]) -> dict[str, Any]:
        """The lean path: an AdmissionReview request in, its AdmissionReview response out.

        Only Pod CREATE is decided; anything else is allowed unchanged. Raises
        :class:`ValueError` for a body that is not an AdmissionReview request.
        """
        request = review.get("request")
        if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
            raise ValueError("not an AdmissionReview request (request.uid is missing)")
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        resource = request.get("resource") or {}
        pod = request.get("object")
        if (
            request.get("operation") == "CREATE"
            and isinstance(resource, Mapping)
            and (resource.get("group"), resource.get("resource")) == ("", "pods")
            and isinstance(pod, Mapping)
        ):
            admission = await self.decide(pod, bool(request.get("dryRun")))
            if admission is not None:
                if admission.warnings:
                    response["warnings"] = list(admission.warnings)
                if admission.operations:
                    encoded = orjson.dumps(admission.operations)
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(encoded).decode("ascii")
        return {
            "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": review.get("kind", "AdmissionReview"),
            "response": response,
        }

    async def __call__(
        self,
        body: Mapping[str, Any],
        patch: kopf.Patch,
        dryrun: bool,
        warnings: list[str],
        **_: Any,
    ) -> None:
        """kopf's path (see the module docstring): the same decision, applied through
        ``patch.fns`` for kopf to diff."""
        admission = await self.decide(dict(body), dryrun)
        if admission is None:
            return
        if admission.result == "mutated":
            assert admission.metadata is not None
            assert admission.spec is not None
            patch.fns.append(_put(admission.metadata, admission.spec))
        warnings.extend(admission.warnings)


def reachable_host(bind_host: str) -> str:
    """The address the API server should use to reach a server bound to ``bind_host``."""
    return (
        "127.0.0.1"
        if bind_host in ("0.0.0.0", "", "*")
        else "::1"
        if bind_host == "::"
        else bind_host
    )


class ServingWebhookServer(kopf.WebhookServer):
    """kopf's WebhookServer (TLS, certificate reloads, the port), with two changes: it tells
    us each time it starts serving, and it answers :data:`WEBHOOK_ID` on the lean path."""

    def __init__(
        self,
        *,
        on_serving: Callable[[Mapping[str, Any]], None],
        lean: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._on_serving = on_serving
        self._lean = lean

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:  # type: ignore[override]
        if self._lean is None or request.match_info.get("id") != WEBHOOK_ID:
            return await super()._serve(fn, request)
        try:
            # orjson: several times faster than json on large pods; nesting past 1024 levels
            # is a JSONDecodeError (a ValueError), never a RecursionError.
            review = orjson.loads(await request.read())
            if not isinstance(review, Mapping):
                raise ValueError("not a JSON object")
            answer = await self._lean(review)
        except ValueError as exc:
            raise aiohttp.web.HTTPBadRequest(reason=str(exc)[:200] or None) from None
        return aiohttp.web.Response(body=orjson.dumps(answer), content_type="application/json")

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
