"""The typed clients against the real local model server, and their failure messages against a
misbehaving fake server (the only thing faked: a third-party HTTP API)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.ai.clients import (
    DocumentDraft,
    Message,
    ModelClients,
    ModelConfig,
    Transcript,
    external_error,
)
from app.kit.errors import ExternalServiceError
from app.settings import Settings
from tests.app.ai.conftest import CONTENT_WORDS

BASE_URL = "http://models.test/v1"


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_clients(app_or_handler: Any, **config: Any) -> ModelClients:
    if callable(app_or_handler) and not hasattr(app_or_handler, "router"):
        transport: Any = httpx2.MockTransport(app_or_handler)
    else:
        transport = httpx2.ASGITransport(app=app_or_handler)
    settings = Settings(openai_base_url=BASE_URL, openai_api_key="local")  # type: ignore[arg-type]
    return ModelClients.from_settings(
        settings,
        config=ModelConfig(max_retries=0, **config),
        http_client=httpx2.AsyncClient(transport=transport),
    )


@pytest.fixture
async def clients(model_app: Any) -> AsyncIterator[ModelClients]:
    clients = make_clients(model_app, embedding_batch_size=2)
    yield clients
    await clients.aclose()


# Against the local model server.


async def test_embeddings_are_batched_and_kept_in_order(clients: ModelClients) -> None:
    texts = ["budget review", "hiring plan", "launch date", "office kitchen", "budget review"]
    tokens_before = sample(
        "record_llm_tokens_total",
        {"model": "all-minilm-l6-v2", "operation": "embed", "kind": "prompt"},
    )
    calls_before = sample(
        "record_external_calls_total",
        {"service": "openai", "operation": "embeddings", "status": "ok"},
    )
    result = await clients.embeddings.embed(texts)
    assert result.model == "all-minilm-l6-v2"
    assert len(result.vectors) == 5
    assert all(len(v) == 384 for v in result.vectors)
    assert np.allclose(result.vectors[0], result.vectors[4], atol=1e-5)
    assert np.allclose(
        result.vectors[2], await clients.embeddings.embed_query("launch date"), atol=1e-5
    )
    assert result.prompt_tokens > 0
    calls_after = sample(
        "record_external_calls_total",
        {"service": "openai", "operation": "embeddings", "status": "ok"},
    )
    assert calls_after - calls_before == 4  # three batches of <= 2, then the query
    tokens_after = sample(
        "record_llm_tokens_total",
        {"model": "all-minilm-l6-v2", "operation": "embed", "kind": "prompt"},
    )
    assert tokens_after - tokens_before >= result.prompt_tokens


async def test_openai_model_names_send_dimensions(model_app: Any) -> None:
    clients = make_clients(model_app, embedding_model="text-embedding-3-small")
    try:
        result = await clients.embeddings.embed(["hello"])
    finally:
        await clients.aclose()
    assert len(result.vectors[0]) == 384
    assert result.model == "all-minilm-l6-v2"  # the model that really made the vector


async def test_a_dimension_mismatch_is_refused(model_app: Any) -> None:
    clients = make_clients(model_app, embedding_dimensions=512)
    with pytest.raises(ExternalServiceError, match=r"384-dimensional vectors.*stores 512"):
        await clients.embeddings.embed(["hello"])
    clients = make_clients(
        model_app, embedding_model="text-embedding-3-small", embedding_dimensions=256
    )
    with pytest.raises(ExternalServiceError, match=r"rejected the embeddings request.*384"):
        await clients.embeddings.embed(["hello"])


async def test_transcribes_a_path_into_a_typed_transcript(
    clients: ModelClients, speech_wav: Path
) -> None:
    transcript = await clients.transcription.transcribe(speech_wav, language="en")
    assert isinstance(transcript, Transcript)
    assert transcript.language == "en"
    assert 8 < transcript.duration < 15
    words = set(transcript.text.lower().replace(".", " ").replace(",", " ").split())
    assert len(words & set(CONTENT_WORDS)) >= 9
    assert transcript.segments
    assert transcript.segments[0].start == 0
    assert all(s.text == s.text.strip() and s.start <= s.end for s in transcript.segments)


async def test_an_unreadable_upload_says_what_to_send(
    clients: ModelClients, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a recording " * 20)
    with notes.open("rb") as handle, pytest.raises(ExternalServiceError, match="FFmpeg"):
        await clients.transcription.transcribe(handle)


async def test_chat_streams_a_cited_answer(clients: ModelClients) -> None:
    before = sample(
        "record_llm_tokens_total",
        {"model": "record-extractive-1", "operation": "chat", "kind": "completion"},
    )
    pieces = [
        piece
        async for piece in clients.chat.answer(
            "When does the launch happen?",
            ["The team ate pizza.", "The launch happens on May 14 after the security review."],
            history=[Message("user", "Hi"), Message("assistant", "Hello.")],
        )
    ]
    assert "".join(pieces) == "The launch happens on May 14 after the security review. [2]"
    after = sample(
        "record_llm_tokens_total",
        {"model": "record-extractive-1", "operation": "chat", "kind": "completion"},
    )
    assert after - before == 14


async def test_generates_a_document_draft(clients: ModelClients) -> None:
    draft = await clients.chat.generate_document(
        "We discussed the budget for the new office. The budget is two million dollars. "
        "Sam will draft the lease by Monday."
    )
    assert isinstance(draft, DocumentDraft)
    assert draft.model == "record-extractive-1"
    assert draft.title
    assert "budget" in draft.summary
    assert draft.action_items == ["Sam will draft the lease by Monday."]


# Against a misbehaving server: every failure is an ExternalServiceError that says what to do.


def answering(status: int, body: Any) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=body)

    return handler


def raising(exc: Exception) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise exc

    return handler


def embedding_rows(count: int) -> dict[str, Any]:
    return {
        "object": "list",
        "model": "m",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.0] * 384} for i in range(count)
        ],
    }


def openai_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (raising(httpx2.ConnectError("refused")), "Could not reach .*record models serve"),
        (raising(httpx2.ReadTimeout("slow")), "did not answer the embeddings request in time"),
        (answering(401, openai_error("bad key")), "OPENAI_API_KEY"),
        (answering(404, openai_error("no such model")), "does not serve the model.*/v1/models"),
        (answering(429, openai_error("slow down")), "rate limiting"),
        (answering(400, openai_error("input too long")), "rejected.*input too long"),
        (answering(422, "unprocessable"), "rejected the embeddings request"),
        (answering(503, openai_error("down")), r"failed on embeddings \(HTTP 503\)"),
        (answering(200, embedding_rows(0)), "unusable answer to embeddings"),
        (answering(200, embedding_rows(2)), "2 vectors for 1"),
    ],
)
async def test_embedding_failures_say_what_to_do(
    handler: Callable[[httpx2.Request], httpx2.Response], expected: str
) -> None:
    clients = make_clients(handler)
    calls_before = sample(
        "record_external_calls_total",
        {"service": "openai", "operation": "embeddings", "status": "error"},
    )
    with pytest.raises(ExternalServiceError, match=expected) as caught:
        await clients.embeddings.embed(["x"])
    assert caught.value.status_code == 502
    assert caught.value.service == "openai"
    # Only a refusal of what was sent is final; the rest may pass on a later attempt.
    assert caught.value.retryable == ("rejected" not in expected)
    if "vectors for" not in expected:
        calls_after = sample(
            "record_external_calls_total",
            {"service": "openai", "operation": "embeddings", "status": "error"},
        )
        assert calls_after == calls_before + 1


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


async def test_a_model_that_does_not_answer_json_is_reported() -> None:
    clients = make_clients(answering(200, completion("Sure! Here are the notes.")))
    with pytest.raises(ExternalServiceError, match="did not answer with JSON"):
        await clients.chat.generate_document("text")
    clients = make_clients(answering(200, completion("[1, 2]")))
    with pytest.raises(ExternalServiceError, match="not an object"):
        await clients.chat.generate_document("text")


async def test_loose_json_is_normalised_into_a_draft() -> None:
    body = {"title": "  Sync ", "summary": None, "key_points": "One point", "action_items": 3}
    clients = make_clients(answering(200, completion(json.dumps(body))))
    draft = await clients.chat.generate_document("text")
    assert (draft.title, draft.summary, draft.key_points, draft.action_items) == (
        "Sync",
        "",
        ["One point"],
        [],
    )


async def test_chat_failures_are_mapped_while_streaming() -> None:
    clients = make_clients(answering(500, openai_error("boom")))
    with pytest.raises(ExternalServiceError, match="failed on chat"):
        async for _ in clients.chat.stream([Message("user", "hi")]):
            pass
    clients = make_clients(raising(httpx2.ConnectError("refused")))
    with pytest.raises(ExternalServiceError, match="Could not reach"):
        await clients.transcription.transcribe(Path(__file__))


def test_an_unexpected_exception_is_still_explained() -> None:
    error = external_error(ValueError("odd payload"), operation="chat", base_url=BASE_URL)
    assert "unusable answer to chat: odd payload" in error.detail


def test_model_config_reads_the_settings_that_exist() -> None:
    class WithModels(Settings):
        embedding_model: str = "text-embedding-3-small"
        openai_timeout_seconds: float = 5

    assert ModelConfig.from_settings(Settings()) == ModelConfig()
    config = ModelConfig.from_settings(WithModels())
    assert config.embedding_model == "text-embedding-3-small"
    assert config.timeout_seconds == 5.0
    assert config.chat_model == "record-extractive-1"
