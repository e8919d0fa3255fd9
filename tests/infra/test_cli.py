"""`record infra plan` writes an offline plan a reviewer can read and validators can check."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from infra.cli import app


def test_plan_writes_resources_and_manifests(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "prod", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Offline render" in result.output
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert isinstance(resources, list)
    assert all({"type", "name", "inputs"} <= set(r) for r in resources)
    types = {r["type"] for r in resources}
    assert "aws:rds/instance:Instance" in types
    manifests = sorted((tmp_path / "manifests").glob("*.yaml"))
    kinds = set()
    for path in manifests:
        text = path.read_text()
        assert text.startswith("# Offline render (Pulumi mocks)")
        doc = yaml.safe_load(text)
        assert list(doc)[:2] == ["apiVersion", "kind"]
        kinds.add(doc["kind"])
    assert {
        "Job",
        "Rollout",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "Ingress",
    } <= kinds
    assert "offline-placeholder" in (tmp_path / "resources.json").read_text()


def test_plan_rejects_an_unknown_stack(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "qa", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no stack file Pulumi.qa.yaml" in result.output


def test_record_cli_mounts_the_infra_commands() -> None:
    from app.cli import app as record_app

    result = CliRunner().invoke(record_app, ["infra", "plan", "--help"])
    assert result.exit_code == 0, result.output
    assert "--stack" in result.output
