"""The model server's own key: /v1 needs it as the bearer token; the health checks do not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import openai
import pytest

from app.ai.local_models import LocalModels
from app.ai.server import create_model_app

KEY = "ms-test-key-0123456789"


@pytest.fixture
async def keyed(local_models: LocalModels) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_model_app(local_models, preload=False, api_key=KEY)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://models.test") as client:
        yield client


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"bearer {KEY}", KEY, f"Bearer {KEY}x"])
async def test_v1_refuses_a_missing_or_wrong_key(keyed: httpx2.AsyncClient, auth: str | None):
    headers = {"Authorization": auth} if auth else {}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/embeddings")):
        response = await keyed.request(method, path, headers=headers, json={"input": "x"})
        assert response.status_code == 401, (path, auth)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert "MODEL_SERVER_API_KEY" in error["message"]


async def test_the_key_opens_v1_and_probes_need_none(keyed: httpx2.AsyncClient):
    auth = {"Authorization": f"Bearer {KEY}"}
    models = await keyed.get("/v1/models", headers=auth)
    assert models.status_code == 200
    embedded = await keyed.post(
        "/v1/embeddings", headers=auth, json={"model": "all-minilm-l6-v2", "input": "hello"}
    )
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["data"][0]["embedding"]) == 384
    assert (await keyed.get("/healthz")).status_code == 200


async def test_the_sdk_says_to_check_the_key(local_models: LocalModels):
    app = create_model_app(local_models, preload=False, api_key=KEY)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    client = openai.AsyncOpenAI(
        base_url="http://models.test/v1", api_key="not-it", http_client=http, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model="all-minilm-l6-v2", input="hello")
    await client.close()


def test_the_key_comes_from_the_environment(
    local_models: LocalModels, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MODEL_SERVER_API_KEY", KEY)
    app = create_model_app(local_models, preload=False)
    assert any(m.cls.__name__ == "RequireKey" for m in app.user_middleware)
    monkeypatch.setenv("MODEL_SERVER_API_KEY", "")
    app = create_model_app(local_models, preload=False)
    assert not any(m.cls.__name__ == "RequireKey" for m in app.user_middleware)
