"""The model server down (issue 15, item 6), at a real address where nothing answers.

Search in hybrid mode answers by words and says so (``mode: keyword``); by meaning alone it is
a clear 502. Chat ends its stream with an ``error`` event. The API is configured the way a
deployment is (``OPENAI_BASE_URL``, the default retries and timeouts), not with a fake client.
"""

from __future__ import annotations

import json
import time
from typing import Any

from app.search.service import QUERY_EMBED_TIMEOUT
from tests.app.chat.test_chat_api import chat
from tests.app.conftest import Tenant
from tests.app.retrieval import PLANNING
from tests.conftest import free_port
from tests.reliability.conftest import SilentHost, http_client, running_app

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
