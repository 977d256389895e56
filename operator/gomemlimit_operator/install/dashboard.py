"""The Grafana dashboard, generated: every panel and its PromQL in one place (:data:`PANELS`).

The chart ships it as a ConfigMap with the Grafana sidecar's label. Tests parse every
query with promtool; the install e2e runs each ``operator`` query against a real Prometheus
scraping the operator, and the runtime-alerts e2e each ``go-runtime`` query against one
scraping Go pods and the kubelet's cAdvisor (the recording rules of deploy/prometheus).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "PANELS",
    "SOURCES",
    "TITLE",
    "UID",
    "Panel",
    "Query",
    "dashboard",
    "dashboard_json",
    "queries",
]

TITLE: Final = "gomemlimit-operator"
UID: Final = "gomemlimit-operator"
# What a panel's series come from: the operator's own metrics, or the Go apps' client_golang
# metrics joined with the kubelets' cAdvisor by the gomemlimit-go-runtime recording rules.
SOURCES: Final = ("operator", "go-runtime")
# math.MaxInt64, the runtime's "no limit", is above this.
_UNSET: Final = "9.2e18"
_JOIN: Final = "on (namespace, pod, container)"
_WHO: Final = "{{namespace}}/{{pod}}/{{container}}"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    type: str
    queries: tuple[Query, ...]
    description: str
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "operator"


PANELS: Final[tuple[Panel, ...]] = (
    Panel(
        "Governed containers by state",
        "timeseries",
        (
            Query(
                "sum by (state) (max by (namespace, policy, state) (gomemlimit_containers))",
                "{{state}}",
            ),
        ),
        "Containers per compliance state, from the leader replica.",
    ),
    Panel(
        "Noncompliant containers by namespace",
        "timeseries",
        (
            Query(
                "sum by (namespace) (max by (namespace, policy, state) "
                '(gomemlimit_containers{state=~"missing|invalid|exceeds_limit|no_memory_limit|'
                'unsatisfiable|stale"}))',
                "{{namespace}}",
            ),
        ),
        "Containers whose state needs action, per namespace.",
    ),
    Panel(
        "Noncompliant containers",
        "table",
        (
            Query(
                "max by (namespace, pod, container, state, policy) "
                "(gomemlimit_noncompliant_container_info)",
                instant=True,
            ),
        ),
        "One row per noncompliant container (needs --noncompliant-info, the default).",
        width=24,
    ),
    Panel(
        "Admission requests by result",
        "timeseries",
        (Query("sum by (result) (rate(gomemlimit_admission_requests_total[5m]))", "{{result}}"),),
        "Pod CREATE requests the webhook answered, per second, summed over replicas.",
        unit="reqps",
        width=8,
    ),
    Panel(
        "Admission errors",
        "timeseries",
        (
            Query(
                'sum(rate(gomemlimit_admission_requests_total{result="error"}[5m])) '
                "/ sum(rate(gomemlimit_admission_requests_total[5m]))",
                "error ratio",
            ),
        ),
        "Share of requests the handler failed on (the pod was admitted unmutated).",
        unit="percentunit",
        width=8,
    ),
    Panel(
        "Admission latency",
        "timeseries",
        (
            Query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(gomemlimit_admission_duration_seconds_bucket[5m])))",
                "p99",
            ),
            Query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(gomemlimit_admission_duration_seconds_bucket[5m])))",
                "p50",
            ),
        ),
        "Time spent in the handler (the API server's round trip is "
        "apiserver_admission_webhook_admission_duration_seconds).",
        unit="s",
        width=8,
    ),
    Panel(
        "Leader",
        "stat",
        (Query("max by (pod) (gomemlimit_leader)", "{{pod}}", instant=True),),
        "1 on the replica that holds the Lease.",
        width=12,
        height=5,
    ),
    Panel(
        "Since the last full evaluation",
        "stat",
        (Query("time() - max(gomemlimit_last_evaluation_timestamp_seconds)", instant=True),),
        "Normally under a minute; the GoMemLimitWatcherStalled alert fires past 5 minutes.",
        unit="s",
        width=12,
        height=5,
    ),
    Panel(
        "Go runtime limit against container limit",
        "timeseries",
        (
            Query(f"gomemlimit:go_runtime_limit_bytes < {_UNSET}", f"GOMEMLIMIT {_WHO}"),
            Query(
                f"gomemlimit:container_memory_limit_bytes and {_JOIN} "
                "gomemlimit:go_runtime_limit_bytes",
                f"limit {_WHO}",
            ),
        ),
        "The memory limit each Go container's runtime uses (go_gc_gomemlimit_bytes, whatever "
        "the spec says) and its container's limit (cAdvisor). A container with no GOMEMLIMIT "
        "shows only its limit.",
        unit="bytes",
        source="go-runtime",
    ),
    Panel(
        "Go runtime limit / container limit",
        "timeseries",
        (
            Query(
                "clamp_max(gomemlimit:go_runtime_limit_bytes "
                f"/ {_JOIN} gomemlimit:container_memory_limit_bytes, 1.5)",
                _WHO,
            ),
        ),
        "At or above 100% GoRuntimeMemoryLimitMissing fires: the kernel OOM-kills before the "
        "GC reacts. No GOMEMLIMIT (math.MaxInt64) is drawn at the 150% cap.",
        unit="percentunit",
        source="go-runtime",
    ),
    Panel(
        "Live heap / GOMEMLIMIT",
        "timeseries",
        (
            Query(
                f"gomemlimit:go_heap_live_bytes / {_JOIN} "
                f"(gomemlimit:go_runtime_limit_bytes < {_UNSET})",
                _WHO,
            ),
        ),
        "GoHeapNearMemoryLimit fires above 90% for 10 minutes: the GC then runs back to back.",
        unit="percentunit",
        source="go-runtime",
    ),
    Panel(
        "GC CPU fraction",
        "timeseries",
        (Query("gomemlimit:go_gc_cpu_fraction:rate5m", _WHO),),
        "Share of the CPU time GOMAXPROCS allows that the GC used (the runtime caps it near "
        "50%). Needs the opt-in runtime metrics /cpu/classes/gc/total:cpu-seconds and "
        "/cpu/classes/total:cpu-seconds (docs/metrics.md).",
        unit="percentunit",
        source="go-runtime",
    ),
)


def queries(source: str | None = None) -> list[str]:
    """Every PromQL expression of the dashboard (or of its panels on ``source``), in order."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: one of {SOURCES}")
    return [
        query.expr for panel in PANELS if source in (None, panel.source) for query in panel.queries
    ]


def _panel(index: int, panel: Panel, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "refId": chr(ord("A") + n),
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "expr": query.expr,
            "legendFormat": query.legend,
            "instant": query.instant,
            "range": not query.instant,
            **({"format": "table"} if panel.type == "table" else {}),
        }
        for n, query in enumerate(panel.queries)
    ]
    out: dict[str, Any] = {
        "id": index + 1,
        "title": panel.title,
        "description": panel.description,
        "type": panel.type,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": dict(panel.options),
        "targets": targets,
    }
    if panel.type == "table":
        out["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}
        ]
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard model (Grafana schema 39), panels laid out left to right."""
    panels, x, y, row_height = [], 0, 0, 0
    for index, panel in enumerate(PANELS):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(index, panel, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": UID,
        "title": TITLE,
        "tags": ["gomemlimit"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"
