"""`record infra plan` writes an offline plan a reviewer can read and validators can check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_plan_of_a_preview_shows_its_database_and_valkey_user(tmp_path: Path) -> None:
    """#13: `record infra plan --stack preview` lists the pull request's database (the Command
    whose delete drops it, with the Job that makes it) and its Valkey user as resources of the
    stack, so `pulumi destroy` of the stack removes them; none is protected or retained."""
    result = CliRunner().invoke(app, ["plan", "--stack", "preview", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    resources = json.loads((tmp_path / "resources.json").read_text())
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(str(resource["type"]), []).append(resource)
    database = by_type["command:local:Command"]
    assert len(database) == 1
    assert str(database[0]["name"]).endswith("-database")
    assert [r["inputs"]["userName"] for r in by_type["aws:elasticache/user:User"]] == ["pr-0"]
    jobs = [
        doc
        for path in (tmp_path / "manifests").glob("*.yaml")
        if (doc := yaml.safe_load(path.read_text()))["kind"] == "Job"
    ]
    assert any(j["metadata"]["name"].startswith("record-db-provision-pr-0") for j in jobs)
    assert not any(r.get("protect") or r.get("retainOnDelete") for r in resources)
