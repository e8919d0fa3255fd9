"""Grafana dashboards as code (grafana-foundation-sdk), shipped as ConfigMaps for the sidecar.

Queries name only metric families from ``app.kit.metrics``; ``tests/monitoring`` checks that.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
SEARCH_ROUTE = "/api/search"


def _query(expr: str, legend: str = "", ref_id: str = "A") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).range().ref_id(ref_id)
    if legend:
        query = query.legend_format(legend)
    return query


def _series(title: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    for index, query in enumerate(queries):
        panel = panel.with_target(query.ref_id(chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(4)
        .span(6)
        .with_target(_query(expr))
    )


def _p95(selector: str) -> str:
    return (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(record_http_request_duration_seconds_bucket{{{selector}}}[5m])))"
    )


def api_dashboard() -> dash.Dashboard:
    return (
        dash.Dashboard("Record / API")
        .uid("record-api")
        .tags(["record", "api"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_panel(
            _stat(
                "Availability (30d, SLO 99.9%)",
                "percentunit",
                '1 - sum(increase(record_http_requests_total{status=~"5.."}[30d]))'
                " / sum(increase(record_http_requests_total[30d]))",
            )
        )
        .with_panel(_stat("API p95 (SLO 500 ms)", "s", _p95(f'route!="{SEARCH_ROUTE}"')))
        .with_panel(_stat("Search p95 (SLO 200 ms)", "s", _p95(f'route="{SEARCH_ROUTE}"')))
        .with_panel(
            _stat(
                "Unhandled errors (1h)",
                "short",
                "sum(increase(record_http_unhandled_errors_total[1h]))",
            )
        )
        .with_row(dash.Row("Traffic"))
        .with_panel(
            _series(
                "Requests by status",
                "reqps",
                _query("sum by (status) (rate(record_http_requests_total[5m]))", "{{status}}"),
            )
        )
        .with_panel(
            _series(
                "p95 latency by route",
                "s",
                _query(
                    "histogram_quantile(0.95, sum by (le, route) "
                    "(rate(record_http_request_duration_seconds_bucket[5m])))",
                    "{{route}}",
                ),
            )
        )
        .with_row(dash.Row("Dependencies"))
        .with_panel(
            _series(
                "Database p95 by table",
                "s",
                _query(
                    "histogram_quantile(0.95, sum by (le, table) "
                    "(rate(record_db_query_duration_seconds_bucket[5m])))",
                    "{{table}}",
                ),
                _query("sum(rate(record_db_slow_queries_total[5m]))", "slow queries/s"),
            )
        )
        .with_panel(
            _series(
                "Cache hit ratio",
                "percentunit",
                _query(
                    'sum by (cache) (rate(record_cache_requests_total{result="hit"}[5m]))'
                    " / sum by (cache) (rate(record_cache_requests_total[5m]))",
                    "{{cache}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Search plans (exact, HNSW, HNSW falling back to exact)",
                "reqps",
                _query("sum by (plan) (rate(record_search_plans_total[5m]))", "{{plan}}"),
            )
        )
        .with_panel(
            _series(
                "Rate limiter",
                "reqps",
                _query(
                    "sum by (limiter, decision) (rate(record_ratelimit_decisions_total[5m]))",
                    "{{limiter}} {{decision}}",
                ),
                _query(
                    "sum by (limiter) (rate(record_ratelimit_fail_open_total[5m]))",
                    "{{limiter}} fail-open",
                ),
            )
        )
        .with_panel(
            _series(
                "External calls",
                "reqps",
                _query(
                    "sum by (service, status) (rate(record_external_calls_total[5m]))",
                    "{{service}} {{status}}",
                ),
                _query(
                    "histogram_quantile(0.95, sum by (le, service) "
                    "(rate(record_external_call_duration_seconds_bucket[5m])))",
                    "{{service}} p95",
                ),
            )
        )
        .with_panel(
            _series(
                "Object storage",
                "ops",
                _query(
                    "sum by (op, status) (rate(record_storage_operations_total[5m]))",
                    "{{op}} {{status}}",
                ),
                _query("sum by (op) (rate(record_storage_bytes_total[5m]))", "{{op}} bytes/s"),
            )
        )
    )


def jobs_dashboard() -> dash.Dashboard:
    return (
        dash.Dashboard("Record / Jobs and models")
        .uid("record-jobs")
        .tags(["record", "worker"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_panel(_stat("Oldest queued job", "s", "max(record_job_queue_oldest_age_seconds)"))
        .with_panel(
            _stat(
                "Job failure ratio (1h)",
                "percentunit",
                'sum(increase(record_jobs_total{status="failed"}[1h]))'
                " / sum(increase(record_jobs_total[1h]))",
            )
        )
        .with_panel(
            _series(
                "Jobs by type and status",
                "ops",
                _query(
                    "sum by (type, status) (rate(record_jobs_total[5m]))", "{{type}} {{status}}"
                ),
            )
        )
        .with_panel(
            _series(
                "Job p95 duration",
                "s",
                _query(
                    "histogram_quantile(0.95, sum by (le, type) "
                    "(rate(record_job_duration_seconds_bucket[15m])))",
                    "{{type}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Queue age",
                "s",
                _query("max by (queue) (record_job_queue_oldest_age_seconds)", "{{queue}}"),
            )
        )
        .with_panel(
            _series(
                "Model tokens",
                "short",
                _query(
                    "sum by (model, kind) (rate(record_llm_tokens_total[5m]))",
                    "{{model}} {{kind}}",
                ),
                _query(
                    "histogram_quantile(0.95, sum by (le, model) "
                    "(rate(record_llm_request_duration_seconds_bucket[5m])))",
                    "{{model}} p95",
                ),
            )
        )
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON model, for the Grafana sidecar."""
    out = {}
    for builder in (api_dashboard(), jobs_dashboard()):
        model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
        out[f"{model['uid']}.json"] = model
    return out


if __name__ == "__main__":  # pragma: no cover - `python -m monitoring.dashboards > x.json`
    print(json.dumps(dashboards(), indent=2, sort_keys=True))
