"""The Grafana dashboard, generated: every panel and its PromQL in one place (:data:`PANELS`).

The chart ships it as a ConfigMap with the Grafana sidecar's label. Tests parse every
query with promtool, and the install e2e runs each against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["PANELS", "TITLE", "UID", "Panel", "Query", "dashboard", "dashboard_json", "queries"]

TITLE: Final = "gomemlimit-operator"
UID: Final = "gomemlimit-operator"


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
)


def queries() -> list[str]:
    """Every PromQL expression of the dashboard, in panel order."""
    return [query.expr for panel in PANELS for query in panel.queries]


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
