"""The seed's limiters on the new routes: ``chat`` and ``search``, per user, with headers."""

from __future__ import annotations

import pytest

from tests.app.conftest import Tenant
from tests.app.retrieval import CountingTransport


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"ratelimit_chat": "2/60", "ratelimit_search": "3/60"})


async def test_chat_is_limited_per_user_before_anything_is_kept(
    client, models: CountingTransport, org_a: Tenant
):
    for remaining in ("1", "0"):
        async with client.stream(
            "POST", "/api/chat/stream", json={"message": "hello"}, headers=org_a.auth()
        ) as response:
            await response.aread()
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit"] == "2"
            assert response.headers["x-ratelimit-remaining"] == remaining
    response = await client.post(
        "/api/chat/stream", json={"message": "hello"}, headers=org_a.auth()
    )
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    conversations = (await client.get("/api/conversations", headers=org_a.auth())).json()
    assert len(conversations["items"]) == 2  # the refused question was not kept
    # Another person of the same org has their own budget.
    _user, session = await org_a.member("reader")
    async with client.stream(
        "POST", "/api/chat/stream", json={"message": "hello"}, headers=org_a.session_auth(session)
    ) as response:
        await response.aread()
        assert response.status_code == 200


async def test_search_is_limited_per_user(client, models: CountingTransport, org_a: Tenant):
    body = {"query": "budget", "mode": "keyword"}
    for _ in range(3):
        response = await client.post("/api/search", json=body, headers=org_a.auth())
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "3"
    response = await client.post("/api/search", json=body, headers=org_a.auth())
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
