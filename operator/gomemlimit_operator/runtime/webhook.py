"""The mutating admission webhook for Pod CREATE: a thin adapter around the engine.

:class:`~.webhook_server.WebhookServer` hands every ``POST`` of :data:`WEBHOOK_PATH` to
:meth:`PodWebhook.review`: an AdmissionReview in, its answer out. Only a Pod CREATE is decided
(:func:`admit`); any other operation, resource or subresource is allowed unchanged and counted
as ``ignored``. The JSON patch is the engine's own list of operations
(``engine.plan_mutation``): the env entries and annotations it adds or replaces, computed from
shallow copies. Nothing copies or diffs the whole pod, so the work per request is linear in the
pod's containers and env entries. kopf serves no admission at all.

Manners: exempt or unwatched namespaces, opted-out pods, mirror pods and audit-mode policies
are skipped. A dry-run request gets exactly the same patch (we have no side effects); it is
counted in the metrics like any request, and logged as "would inject". Any exception of ours
is caught: the pod is allowed unmutated, the error is logged (at most once per 10 s, with the
number suppressed) and counted (result="error").
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from gomemlimit_operator.core.api import WEBHOOK_PATH
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
from gomemlimit_operator.runtime.webhook_server import RateLimitedLog

__all__ = [
    "WEBHOOK_PATH",
    "Admission",
    "PodWebhook",
    "admit",
    "reachable_host",
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


def _summary(injected: Mapping[str, Mapping[str, str]], shown: int = 3) -> str:
    """The injected values for a log line: a few containers, then how many more. Names are
    shortened: the webhook sees a pod before the API server validates it, so a container
    name can be megabytes long."""
    items = [
        f"{_short(name, 100)}: {dict(values)}" for name, values in list(injected.items())[:shown]
    ]
    if len(injected) > shown:
        items.append(f"and {len(injected) - shown} more containers")
    return "{" + ", ".join(items) + "}"


def _describe(pod: Mapping[str, Any]) -> str:
    """namespace/name for a log line; never raises, whatever the object holds. Only strings
    are shown: formatting any other value can fail (a list nested 1,000 levels deep raises
    RecursionError), and this runs in the handler's own error path."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping):
        return "?/?"

    def text(key: str) -> str:
        value = metadata.get(key)
        return value if isinstance(value, str) else ""

    name = text("name") or f"{text('generateName')}<generated>"
    return _short(f"{text('namespace') or '?'}/{name}")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PodWebhook:
    """The pod webhook: AdmissionReviews in, answers out, with its collaborators injected."""

    def __init__(
        self,
        registry: PolicyView,
        *,
        exempt: Callable[[str], bool],
        metrics: AdmissionMetrics,
        ensure_namespace: Callable[[str], Awaitable[None]] | None = None,
        error_log_interval: float = 10.0,
    ) -> None:
        self.registry = registry
        self.exempt = exempt
        self.metrics = metrics
        self.ensure_namespace = ensure_namespace
        self._errors = RateLimitedLog(logger, error_log_interval)

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
            self._errors.log(
                logging.ERROR,
                "Admission of pod %s failed; allowing it unmutated.",
                _describe(pod),
                exc_info=True,
            )
            admission = Admission("error", "internal error")
        self.metrics.observe(admission.result, time.perf_counter() - started)
        return admission

    async def review(self, review: Mapping[str, Any]) -> dict[str, Any]:
        """An AdmissionReview request in, its AdmissionReview response out.

        Only a Pod CREATE (no subresource) is decided; anything else is allowed unchanged and
        counted as ``ignored``. Raises :class:`ValueError` for a body that is not an
        AdmissionReview request; never for a request it can answer.
        """
        request = review.get("request")
        if not isinstance(request, Mapping) or not isinstance(uid := request.get("uid"), str):
            raise ValueError("not an AdmissionReview request (request.uid is missing)")
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        resource = request.get("resource")
        pod = request.get("object")
        if (
            request.get("operation") == "CREATE"
            and isinstance(resource, Mapping)
            and resource.get("resource") == "pods"
            and resource.get("group") == ""
            and not request.get("subResource")
            and isinstance(pod, Mapping)
        ):
            try:
                admission = await self.decide(pod, bool(request.get("dryRun")))
                if admission is not None:
                    if admission.warnings:
                        response["warnings"] = list(admission.warnings)
                    if admission.operations:
                        encoded = orjson.dumps(admission.operations)
                        response["patchType"] = "JSONPatch"
                        response["patch"] = base64.b64encode(encoded).decode("ascii")
            except Exception:  # decide() never raises; this guards what follows it
                self._errors.log(
                    logging.ERROR,
                    "Answering for pod %s failed; allowing it.",
                    _describe(pod),
                    exc_info=True,
                )
                response = {"uid": uid, "allowed": True}
        else:
            self.metrics.count("ignored")
        api_version = review.get("apiVersion")
        return {
            "apiVersion": api_version if isinstance(api_version, str) else "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }


def reachable_host(bind_host: str) -> str:
    """The address the API server should use to reach a server bound to ``bind_host``."""
    return (
        "127.0.0.1"
        if bind_host in ("0.0.0.0", "", "*")
        else "::1"
        if bind_host == "::"
        else bind_host
    )
