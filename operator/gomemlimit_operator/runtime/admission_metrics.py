"""Prometheus series of the admission webhook and of the server that carries it.

``gomemlimit_admission_requests_total{result}`` counts every AdmissionReview the pod webhook
answered, by result (:data:`RESULTS`); dry-run requests are counted like the others, since
they cost the same work. ``gomemlimit_admission_duration_seconds`` is the time spent deciding
a Pod CREATE in our handler (engine and bookkeeping), not the whole HTTPS round trip: the
API server's ``apiserver_admission_webhook_admission_duration_seconds`` measures that.

The server (``webhook_server``) counts what never became an admission decision:
``gomemlimit_admission_rejected_requests_total{reason}`` (:data:`REJECT_REASONS`), and
``gomemlimit_webhook_connections_closed_total{reason}`` (:data:`CLOSE_REASONS`) for the
connections it closed because of a limit, beside the gauge ``gomemlimit_webhook_connections``.
Every label value is from a fixed set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "CLOSE_REASONS",
    "REJECT_REASONS",
    "RESULTS",
    "AdmissionMetrics",
    "CloseReason",
    "RejectReason",
    "Result",
    "ServingMetrics",
]

Result = Literal["mutated", "unchanged", "skipped", "too_large", "error", "ignored"]
RESULTS: Final[tuple[Result, ...]] = (
    "mutated",
    "unchanged",
    "skipped",
    "too_large",
    "error",
    "ignored",
)
"""mutated: a patch was returned. unchanged: a governed pod needed nothing. skipped: the pod
was not ours to change (exempt or unwatched namespace, opt-out, mirror pod, no policy, audit
mode). too_large: a governed pod beyond the engine's bounds (containers or env entries); it
was allowed unchanged, with a warning. error: our own failure; the pod was allowed
unmutated. ignored: not a Pod CREATE (another operation, resource or subresource), allowed
unchanged without looking at the object."""

RejectReason = Literal["too_large", "malformed", "unknown_path", "method", "error"]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = (
    "too_large",
    "malformed",
    "unknown_path",
    "method",
    "error",
)
"""too_large: 413, a body above the limit. malformed: 400, not HTTP, not JSON or not an
AdmissionReview request. unknown_path: 404, a path other than the webhook's. method: 405,
not a POST. error: 500, a failure of the server itself (no AdmissionReview answer)."""

CloseReason = Literal["over_limit", "header_timeout", "tls_handshake"]
CLOSE_REASONS: Final[tuple[CloseReason, ...]] = ("over_limit", "header_timeout", "tls_handshake")
"""over_limit: closed at once, because --webhook-max-connections were open. header_timeout:
a request (headers and body) that did not arrive within --webhook-header-timeout.
tls_handshake: a TLS handshake that failed or took longer than that."""

BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AdmissionMetrics:
    """The two admission series, on the registry the operator serves (never
    prometheus_client's global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gomemlimit_admission_requests_total",
            "Pod admission requests answered by the webhook, by result.",
            ["result"],
            registry=registry,
        )
        self.duration = Histogram(
            "gomemlimit_admission_duration_seconds",
            "Time spent handling one pod admission request inside the operator.",
            buckets=BUCKETS,
            registry=registry,
        )
        # Every child made now: zeros are exported from the start (rate() and alerts work),
        # and counting skips the label lookup.
        self._children = {result: self.requests.labels(result=result) for result in RESULTS}

    def observe(self, result: Result, seconds: float) -> None:
        """One decided Pod CREATE."""
        self._children[result].inc()
        self.duration.observe(seconds)

    def count(self, result: Result) -> None:
        """One answer without a decision (``ignored``): not in the duration histogram."""
        self._children[result].inc()


class ServingMetrics:
    """The server's series: rejected requests, closed connections, open connections."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected_requests = Counter(
            "gomemlimit_admission_rejected_requests_total",
            "HTTP requests to the webhook port answered with an error instead of an "
            "AdmissionReview, by reason.",
            ["reason"],
            registry=registry,
        )
        self.closed_connections = Counter(
            "gomemlimit_webhook_connections_closed_total",
            "Connections to the webhook port closed by the server because of a limit, by reason.",
            ["reason"],
            registry=registry,
        )
        self.connections = Gauge(
            "gomemlimit_webhook_connections",
            "Open connections to the webhook port, TLS handshakes included.",
            registry=registry,
        )
        self._rejected = {r: self.rejected_requests.labels(reason=r) for r in REJECT_REASONS}
        self._closed = {r: self.closed_connections.labels(reason=r) for r in CLOSE_REASONS}

    def rejected(self, reason: RejectReason) -> None:
        self._rejected[reason].inc()

    def dropped(self, reason: CloseReason) -> None:
        self._closed[reason].inc()

    def track_connections(self, count: Callable[[], float]) -> None:
        self.connections.set_function(count)
