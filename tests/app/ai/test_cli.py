"""`record models serve`: starts uvicorn on the factory, and imports nothing heavy to get there."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from app.ai import cli


def test_serve_runs_uvicorn_on_the_app_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = CliRunner().invoke(cli.app, ["serve", "--port", "8111", "--workers", "2"])
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = calls
    assert args == ("app.ai.server:create_model_app",)
    assert kwargs["factory"] is True
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("127.0.0.1", 8111, 2)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_importing_the_cli_loads_no_model_library() -> None:
    code = (
        "import sys, app.ai.cli, app.ai.clients, worker.chunking; "
        "heavy = {'torch', 'faster_whisper', 'sentence_transformers', 'transformers', 'av'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
