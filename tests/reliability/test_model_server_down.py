"""The model server down (issue 15, item 6), at a real address where nothing answers.

Search in hybrid mode answers by words and says so (``mode: keyword``); by meaning alone it is
a clear 502. Chat ends its stream with an ``error`` event. The API is configured the way a
deployment is (``OPENAI_BASE_URL``, the default retries and timeouts), not with a fake client.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
import openai
import pytest
from procrastinate.jobs import Job

from app.ai.clients import ModelClients, ModelServerUnavailable, external_error
from app.search.service import QUERY_EMBED_TIMEOUT
from tests.app.chat.test_chat_api import chat
from tests.app.conftest import Tenant
from tests.app.retrieval import PLANNING
from tests.conftest import free_port
from tests.reliability.conftest import SilentHost, http_client, running_app
from worker.jobs import PipelineRetry, WaitingForModels

QUESTION = "Who will prepare the budget review?"


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def search(client: Any, tenant: Tenant, **body: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    response = await client.post("/api/search", json=body, headers=tenant.auth())
    return response, time.perf_counter() - started


async def test_search_falls_back_to_words_when_the_model_server_refuses(
    settings, corpus, org_a: Tenant
):
    async with (
        running_app(settings.model_copy(update={"openai_base_url": refused_url()})) as app,
        http_client(app) as client,
    ):
        response, elapsed = await search(client, org_a, query="budget review")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["mode"] == "keyword"
        assert body["results"][0]["text"] == PLANNING[0]

        vector, _ = await search(client, org_a, query="budget review", mode="vector")
        assert vector.status_code == 502
        assert vector.headers["content-type"] == "application/problem+json"
        assert "keyword" in vector.json()["detail"]
    print(f"hybrid search with the model server refusing: {elapsed:.2f}s")
    assert elapsed < 5


async def test_search_falls_back_to_words_when_the_model_server_hangs(
    settings, corpus, org_a: Tenant, silent_host: SilentHost
):
    hung = f"http://127.0.0.1:{silent_host.port}/v1"
    async with (
        running_app(settings.model_copy(update={"openai_base_url": hung})) as app,
        http_client(app) as client,
    ):
        response, elapsed = await search(client, org_a, query="budget review")
        silent_host.close()
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "keyword"
    print(f"hybrid search with the model server hung: {elapsed:.2f}s")
    assert elapsed < QUERY_EMBED_TIMEOUT + 1.0


async def test_chat_ends_its_stream_with_an_error_event(settings, corpus, org_a: Tenant):
    async with (
        running_app(settings.model_copy(update={"openai_base_url": refused_url()})) as app,
        http_client(app) as client,
    ):
        status, events = await chat(client, org_a, message=QUESTION)
        assert status == 200
        assert [name for name, _ in events] == ["conversation", "error"]
        error = events[-1][1]
        assert error["status"] == 502
        assert error["detail"] == "The model could not answer right now; ask again."
        assert "127.0.0.1" not in json.dumps(error)  # the server's address is for the log
        conversation_id = events[0][1]["conversation_id"]
        messages = await client.get(
            f"/api/conversations/{conversation_id}/messages", headers=org_a.auth()
        )
    assert [m["role"] for m in messages.json()["items"]] == ["user"]  # kept, to ask again


async def test_chat_ends_with_an_error_event_in_seconds_when_the_model_server_hangs(
    settings, corpus, org_a: Tenant, silent_host: SilentHost
):
    # Accepts the connection and never answers: the connect timeout cannot help, the chat
    # stream's own read timeout (tried once) must. Before it, the SDK's 60 s read timeout
    # times three attempts held the stream for three minutes.
    hung = f"http://127.0.0.1:{silent_host.port}/v1"
    read_timeout = 2.0
    update = {"openai_base_url": hung, "chat_read_timeout_seconds": read_timeout}
    async with (
        running_app(settings.model_copy(update=update)) as app,
        http_client(app) as client,
    ):
        started = time.perf_counter()
        status, events = await chat(client, org_a, message=QUESTION)
        elapsed = time.perf_counter() - started
        silent_host.close()
    assert status == 200
    assert [name for name, _ in events] == ["conversation", "error"]
    assert events[-1][1]["status"] == 502
    print(f"chat with the model server hung: error event after {elapsed:.2f}s")
    # The query's embedding gives up first (search falls back to words), then the answer.
    assert elapsed < QUERY_EMBED_TIMEOUT + read_timeout + 2.0


def test_the_model_client_gives_up_connecting_in_seconds(settings):
    # A model server that is down or unroutable is known within the connect timeout, whatever
    # the (long, for transcription) read timeout.
    models = ModelClients.from_settings(settings)
    timeout = models.chat._client.timeout
    assert isinstance(timeout, openai.Timeout)
    assert timeout.connect == settings.openai_connect_timeout_seconds == 3.0
    assert timeout.read == settings.openai_timeout_seconds
    chat_client = models.chat._chat_client()
    assert chat_client.max_retries == 0
    assert isinstance(chat_client.timeout, openai.Timeout)
    assert chat_client.timeout.read == settings.chat_read_timeout_seconds <= 10


def _status_error(status: int) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://models/v1/embeddings")
    response = httpx2.Response(status, request=request, json={"error": {"message": "no"}})
    return openai.APIStatusError("no", response=response, body={"error": {"message": "no"}})


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_an_outage(status: int):
    error = external_error(_status_error(status), operation="embeddings", base_url="http://m/v1")
    assert isinstance(error, ModelServerUnavailable)
    assert f"HTTP {status}" in error.detail


def test_unreachable_and_timed_out_are_outages():
    request = httpx2.Request("POST", "http://models/v1/embeddings")
    for exc in (openai.APIConnectionError(request=request), openai.APITimeoutError(request)):
        error = external_error(exc, operation="embeddings", base_url="http://m/v1")
        assert isinstance(error, ModelServerUnavailable), exc


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 429])
def test_a_4xx_is_not_an_outage(status: int):
    error = external_error(_status_error(status), operation="embeddings", base_url="http://m/v1")
    assert not isinstance(error, ModelServerUnavailable)


def test_an_outage_is_waited_out_past_the_attempts_and_capped():
    retry = PipelineRetry(max_attempts=5, base_seconds=2.0, outage_max_wait=60.0)
    job = Job(id=1, queue="pipeline", lock=None, queueing_lock=None, task_name="t", attempts=40)
    decision = retry.get_retry_decision(exception=WaitingForModels(60), job=job)
    assert decision is not None  # 41 attempts, and still waiting: the window decides
    assert retry.get_retry_decision(exception=RuntimeError("boom"), job=job) is None
    assert [retry.outage_wait(n, remaining=1800) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert retry.outage_wait(10, remaining=12.5) == 12  # the last attempt at the window's end
