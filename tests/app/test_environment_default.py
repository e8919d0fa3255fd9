"""Production unless told otherwise: a server started without ENVIRONMENT never puts exception
text in a 500; only ENVIRONMENT=development, set on purpose (as `record up` does), shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.devstack.supervisor import Stack, development_unless_set
from app.settings import Environment, Settings
from tests.app.security.helpers import add_failing_route, running_app

ROOT = Path(__file__).resolve().parents[2]


def _from_environment(settings: Any) -> Settings:
    """The test settings, but with ENVIRONMENT read from the process environment."""
    given = {name: getattr(settings, name) for name in settings.model_fields_set}
    given.pop("environment", None)
    return Settings(**given)


def test_the_default_environment_is_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    assert Settings().environment is Environment.production
    monkeypatch.setenv("ENVIRONMENT", "development")
    assert Settings().environment is Environment.development


async def test_a_500_without_environment_set_says_nothing_of_its_cause(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    async with running_app(_from_environment(settings), customize=add_failing_route) as http:
        response = await http.get("/api/test-only/boom/1")
    assert response.status_code == 500
    assert "debug" not in response.json()
    for leak in ("RuntimeError", "SELECT", "hunter2", "psycopg"):
        assert leak not in response.text


async def test_a_500_says_what_failed_only_when_development_is_set(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    async with running_app(_from_environment(settings), customize=add_failing_route) as http:
        response = await http.get("/api/test-only/boom/1")
    assert response.status_code == 500
    assert "RuntimeError" in response.json()["debug"]


def test_record_up_runs_in_development_unless_environment_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    local = development_unless_set(Settings(state_dir=tmp_path / "state"))
    assert local.environment is Environment.development
    stack = Stack(local, root=tmp_path)
    stack.prepare()
    assert stack.base_env()["ENVIRONMENT"] == "development"
    # Said on purpose, it is kept: a production-like local run stays one.
    monkeypatch.setenv("ENVIRONMENT", "production")
    kept = development_unless_set(Settings(state_dir=tmp_path / "state"))
    assert kept.environment is Environment.production
    assert Stack(kept, root=tmp_path).base_env()["ENVIRONMENT"] == "production"


def test_the_image_says_production() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile.split(" AS runtime", 1)[1]
    assert "ENV ENVIRONMENT=production" in runtime
