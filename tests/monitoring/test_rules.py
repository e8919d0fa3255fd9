"""Prometheus rules: valid, unit-tested per alert (firing and silent), and naming only what
the app exports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import RULE_TESTS, RULES, check_expr, selectors


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


ALERTS = sorted(rule["alert"] for rule in _rules() if "alert" in rule)


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_slos_of_the_issue_are_alerted() -> None:
    assert {
        "RecordApiErrorBudgetFastBurn",
        "RecordApiErrorBudgetSlowBurn",
        "RecordApiLatencyHigh",
        "RecordSearchLatencyHigh",
        "RecordJobQueueStale",
        "RecordJobFailureRateHigh",
        "RecordRateLimiterFailOpen",
        "RecordSlowQueries",
    } <= set(ALERTS)
    exprs = {rule.get("record") or rule["alert"]: rule["expr"] for rule in _rules()}
    assert "0.001" in exprs["RecordApiErrorBudgetFastBurn"]  # 99.9% availability
    assert "> 0.5" in exprs["RecordApiLatencyHigh"]
    assert "> 0.2" in exprs["RecordSearchLatencyHigh"]


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == set(ALERTS)
    assert silent == set(ALERTS)


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_test_fails_when_the_alert_is_broken(
    promtool: str, alert: str, tmp_path: Path
) -> None:
    """An alert that can never fire must turn the unit tests red: the tests can fail."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(0) > 1"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(doc))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = _promtool(promtool, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr


def test_rules_name_only_app_metrics(app_series: dict[str, frozenset[str]]) -> None:
    problems = [p for rule in _rules() for p in check_expr(rule["expr"], app_series)]
    assert problems == []


def test_metric_check_catches_a_renamed_metric(app_series: dict[str, frozenset[str]]) -> None:
    assert check_expr("rate(record_http_request_total[5m])", app_series) == [
        "unknown series record_http_request_total"
    ]
    assert check_expr('rate(record_jobs_total{queue="x"}[5m])', app_series) == [
        "record_jobs_total has no label queue"
    ]
    assert check_expr("sum by (tenant) (rate(record_jobs_total[5m]))", app_series)
    assert selectors('record_jobs_total{type="a", status!~"b"}') == [
        ("record_jobs_total", {"type", "status"})
    ]
