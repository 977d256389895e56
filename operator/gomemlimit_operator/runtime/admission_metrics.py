"""Prometheus series of the admission webhook.

``gomemlimit_admission_requests_total{result}`` counts every admission request the pod
webhook handler answered, by result (:data:`RESULTS`); dry-run requests are counted like the
others, since they cost the same work. ``gomemlimit_admission_duration_seconds`` is the time
spent in our handler (engine and bookkeeping), not the whole HTTPS round trip: the API
server's ``apiserver_admission_webhook_admission_duration_seconds`` measures that.
"""

from __future__ import annotations

from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["RESULTS", "AdmissionMetrics", "Result"]

Result = Literal["mutated", "unchanged", "skipped", "too_large", "error"]
RESULTS: Final[tuple[Result, ...]] = ("mutated", "unchanged", "skipped", "too_large", "error")
"""mutated: a patch was returned. unchanged: a governed pod needed nothing. skipped: the pod
was not ours to change (exempt or unwatched namespace, opt-out, mirror pod, no policy, audit
mode). too_large: a governed pod beyond the engine's bounds (containers or env entries); it
was allowed unchanged, with a warning. error: our own failure; the pod was allowed
unmutated."""

BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AdmissionMetrics:
    """The two series, on the registry the operator serves (never prometheus_client's global
    one)."""

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
        for result in RESULTS:  # export zeros, so that rate() and alerts work from the start
            self.requests.labels(result=result)

    def observe(self, result: Result, seconds: float) -> None:
        self.requests.labels(result=result).inc()
        self.duration.observe(seconds)
