"""The model server beyond loopback: it does not start without its key, and a body streamed
without Content-Length meets the same byte limit as one that declares its size."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner

from app.ai import cli
from app.ai.local_models import LocalModels
from app.ai.server import create_model_app

LIMIT = 10_000
PIECE = 1_000
BOUNDARY = "record-test-boundary"


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "models.internal"])
def test_serve_beyond_loopback_refuses_to_start_without_a_key(
    host: str, uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_SERVER_API_KEY", raising=False)
    result = CliRunner().invoke(cli.app, ["serve", "--host", host])
    assert result.exit_code == 2
    assert uvicorn_calls == []
    assert f"Refusing to listen on {host} without MODEL_SERVER_API_KEY" in result.output
    assert "127.0.0.1" in result.output  # and what to do instead
    monkeypatch.setenv("MODEL_SERVER_API_KEY", "")
    assert CliRunner().invoke(cli.app, ["serve", "--host", host]).exit_code == 2
    monkeypatch.setenv("MODEL_SERVER_API_KEY", "ms-a-long-random-secret")
    result = CliRunner().invoke(cli.app, ["serve", "--host", host])
    assert result.exit_code == 0, result.output
    assert [call["host"] for call in uvicorn_calls] == [host]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_serve_on_loopback_needs_no_key(
    host: str, uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_SERVER_API_KEY", raising=False)
    result = CliRunner().invoke(cli.app, ["serve", "--host", host])
    assert result.exit_code == 0, result.output
    assert [call["host"] for call in uvicorn_calls] == [host]


@pytest.fixture
async def small(local_models: LocalModels) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_model_app(local_models, preload=False, max_upload_bytes=LIMIT)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://m.test") as client:
        yield client


async def test_a_chunked_upload_past_the_limit_is_cut_off_with_413(
    small: httpx2.AsyncClient,
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for _ in range(1_000):  # a megabyte, a hundred times the limit
            sent += 1
            yield b"\0" * PIECE
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    response = await small.post(
        "/v1/audio/transcriptions",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "file_too_large"
    # Read up to the limit and no further: the rest was never pulled from the client.
    assert sent <= LIMIT // PIECE + 2


async def test_a_chunked_body_under_the_limit_is_read_as_usual(
    small: httpx2.AsyncClient,
) -> None:
    payload = json.dumps({"model": "no-such-model", "input": "hello"}).encode()

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 8):
            yield payload[start : start + 8]

    response = await small.post(
        "/v1/embeddings", content=body(), headers={"Content-Type": "application/json"}
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    # Parsed whole: the answer is about the model it names, not the body's size.
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
