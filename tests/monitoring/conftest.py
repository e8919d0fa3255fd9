"""What the monitoring tests compare against: the app's own metric registry, and promtool."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "monitoring" / "rules" / "record.rules.yaml"
RULE_TESTS = REPO_ROOT / "monitoring" / "tests" / "record.rules.test.yaml"
# Labels Prometheus adds to every scraped series (target labels), not the app.
TARGET_LABELS = {
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "container",
    "endpoint",
    "rollouts_pod_template_hash",
}
_SELECTOR = re.compile(r"\b(record_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    labels: frozenset[str]

    def series(self) -> dict[str, frozenset[str]]:
        """Series names this family exposes, each with the labels it may carry."""
        if self.kind == "counter":
            return {f"{self.name}_total": self.labels}
        if self.kind == "histogram":
            return {
                f"{self.name}_bucket": self.labels | {"le"},
                f"{self.name}_count": self.labels,
                f"{self.name}_sum": self.labels,
            }
        return {self.name: self.labels}


@pytest.fixture(scope="session")
def app_series() -> dict[str, frozenset[str]]:
    """Series name -> allowed label names, from app.kit.metrics and prometheus_client."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    from app.kit import metrics

    families = [
        Family(obj._name, obj._type, frozenset(obj._labelnames))
        for obj in vars(metrics).values()
        if isinstance(obj, MetricWrapperBase)
    ]
    registered = {f.name for f in REGISTRY.collect()}
    assert {f.name for f in families} <= registered, "module collectors not in REGISTRY"
    out: dict[str, frozenset[str]] = {}
    for family in families:
        out.update(family.series())
    return out


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install prometheus (.ci/run does)"
    return path


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names matched) for every ``record_*`` selector in a PromQL expr."""
    return [
        (name, set(_MATCHER.findall(matchers or ""))) for name, matchers in _SELECTOR.findall(expr)
    ]


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in _GROUPING.findall(expr)
        for label in group.split(",")
        if label.strip()
    }


def check_expr(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Problems with one expression: unknown series or labels the app does not set."""
    problems = []
    found = selectors(expr)
    if not found and "record:" not in expr:
        problems.append(f"names no record_* metric: {expr}")
    allowed_anywhere: set[str] = set(TARGET_LABELS)
    for name, labels in found:
        if name not in series:
            problems.append(f"unknown series {name}")
            continue
        allowed_anywhere |= series[name]
        for label in labels - series[name] - TARGET_LABELS:
            problems.append(f"{name} has no label {label}")
    for label in grouping_labels(expr) - allowed_anywhere:
        problems.append(f"groups by unknown label {label}: {expr}")
    return problems
