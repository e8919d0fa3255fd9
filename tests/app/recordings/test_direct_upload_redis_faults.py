"""Direct uploads keep their state in Valkey; a connection that breaks while Valkey restarts
can raise what redis-py does not wrap (a RuntimeError from a closed transport, an EOFError
from a read cut short). Such an exception is Valkey not answering: a 503 that says to retry,
never a 500 (issue 15: the 5xx right after a Valkey restart)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.app.conftest import Tenant
from tests.app.kit.test_storage import MotoS3, moto_s3  # noqa: F401 - the shared moto server
from tests.app.recordings.test_direct_upload import (  # noqa: F401 - fixtures by name
    assert_problem,
    complete,
    put,
    s3_bucket,
    settings,
    start,
)
from tests.app.recordings.test_upload import wav_bytes


def _breaks(exc: BaseException) -> Any:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return broken


async def test_start_is_a_503_when_valkey_breaks_oddly(
    app: Any, client: httpx.AsyncClient, org_a: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = app.state.services.redis
    monkeypatch.setattr(redis, "set", _breaks(EOFError("read cut short")))
    response = await start(client, org_a, filename="talk.wav", size=1000)
    assert_problem(response, 503)  # was a 500


async def test_complete_is_a_503_when_valkey_breaks_oddly(
    app: Any, client: httpx.AsyncClient, org_a: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = wav_bytes()
    started = await start(client, org_a, filename="talk.wav", size=len(content))
    assert started.status_code == 201, started.text
    assert (await put(started.json(), content)).status_code == 200
    redis = app.state.services.redis
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True>")
    monkeypatch.setattr(redis, "get", _breaks(closed))
    assert_problem(await complete(client, org_a, started.json()["upload_id"]), 503)  # was 500
    monkeypatch.undo()
    # Valkey back: the same upload completes (nothing was claimed by the failed attempt).
    response = await complete(client, org_a, started.json()["upload_id"])
    assert response.status_code == 202, response.text


async def test_a_refused_completion_is_still_refused_when_valkey_breaks_on_cleanup(
    app: Any, client: httpx.AsyncClient, org_a: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"not a recording at all" * 50
    started = await start(client, org_a, filename="talk.wav", size=len(content))
    assert started.status_code == 201, started.text
    assert (await put(started.json(), content)).status_code == 200
    redis = app.state.services.redis
    monkeypatch.setattr(redis, "delete", _breaks(EOFError("read cut short")))
    response = await complete(client, org_a, started.json()["upload_id"])
    assert 400 <= response.status_code < 500, response.text  # the file's answer, not a 500
