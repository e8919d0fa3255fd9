"""Dashboards: valid Grafana JSON, built from Python, querying only what the app exports."""

from __future__ import annotations

import json
from typing import Any

from monitoring.dashboards import dashboards
from tests.monitoring.conftest import check_expr


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def test_dashboards_are_valid_json_models() -> None:
    models = dashboards()
    assert set(models) == {"record-api.json", "record-jobs.json"}
    uids = set()
    for filename, model in models.items():
        assert json.loads(json.dumps(model)) == model
        assert model["uid"] not in uids
        assert filename == f"{model['uid']}.json"
        uids.add(model["uid"])
        assert model["title"].startswith("Record / ")
        assert model["schemaVersion"] >= 36
        for panel in _panels(model):
            assert panel["title"]
            assert panel["datasource"]["type"] == "prometheus"
            assert panel["gridPos"]["w"] > 0
            assert panel["gridPos"]["h"] > 0
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids, panel["title"]
            assert all(ref_ids), panel["title"]
            assert len(set(ref_ids)) == len(ref_ids), panel["title"]


def test_dashboards_show_the_slos() -> None:
    text = json.dumps(dashboards())
    for needle in ("SLO 99.9%", "SLO 500 ms", "SLO 200 ms", "record_job_queue_oldest_age_seconds"):
        assert needle in text


def test_dashboard_queries_name_only_app_metrics(app_series: dict[str, frozenset[str]]) -> None:
    problems = []
    for model in dashboards().values():
        for panel in _panels(model):
            for target in panel["targets"]:
                problems += [
                    f"{panel['title']}: {p}" for p in check_expr(target["expr"], app_series)
                ]
    assert problems == []
