"""The local model server, with the real models, through the real ``openai`` SDK where it can."""

from __future__ import annotations

import base64
import itertools
import json
import re
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from asgi_lifespan import LifespanManager

from app.ai.extractive import NO_CONTEXT, NOT_FOUND
from app.ai.local_models import LocalModels
from app.ai.prompts import DOCUMENT_INSTRUCTIONS, cited_numbers, format_context
from app.ai.server import create_model_app
from tests.app.ai.conftest import CONTENT_WORDS, convert

CHAT = "record-extractive-1"
PASSAGES = [
    "We reviewed the hiring plan. Two backend engineers start in March.",
    "The office kitchen will be repainted next week. Lunch moves to the terrace.",
    "The launch date moved to May 14 because the payment provider needs more testing.",
]


def error_of(response: httpx2.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code", "param"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


# Embeddings.


async def test_embeddings_are_unit_vectors_of_384_dims(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.embeddings.create(model="all-minilm-l6-v2", input=["hello", "world"])
    assert response.model == "all-minilm-l6-v2"
    assert [item.index for item in response.data] == [0, 1]
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert response.usage.prompt_tokens == response.usage.total_tokens == 6  # [CLS] w [SEP] x2


async def test_similar_sentences_score_higher_than_unrelated_ones(sdk: openai.AsyncOpenAI) -> None:
    texts = [
        "When will the product launch?",
        "The release date for the product is in May.",
        "My cat likes to sleep on the sofa.",
    ]
    response = await sdk.embeddings.create(
        model="text-embedding-3-small", input=texts, dimensions=384
    )
    q, related, unrelated = (np.array(item.embedding) for item in response.data)
    assert q @ related > q @ unrelated + 0.2


async def test_float_and_base64_encodings_agree(model_http: httpx2.AsyncClient) -> None:
    body = {"model": "all-minilm-l6-v2", "input": "meeting notes"}
    floats = (await model_http.post("/v1/embeddings", json=body)).json()
    b64 = await model_http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"], atol=1e-6)
    assert floats["object"] == "list"
    assert floats["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 1536}, 400, "dimensions"),
        ({"model": "text-embedding-ada-002", "input": "x"}, 404, "model"),
        ({"model": "all-minilm-l6-v2", "input": []}, 400, "input"),
        ({"model": "all-minilm-l6-v2", "input": ["ok", "  "]}, 400, "input"),
        ({"model": "all-minilm-l6-v2", "input": [1, 2, 3]}, 400, "input"),
        ({"model": "all-minilm-l6-v2", "input": ["x"] * 2049}, 400, "input"),
        ({"model": "all-minilm-l6-v2"}, 400, "input"),
        (
            {"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "int8"},
            400,
            "encoding_format",
        ),
    ],
)
async def test_bad_embedding_requests_get_openai_errors(
    model_http: httpx2.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    response = await model_http.post("/v1/embeddings", json=body)
    assert response.status_code == status
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_the_sdk_raises_its_own_error_for_bad_dimensions(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="384"):
        await sdk.embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=256)


# Transcription.


async def test_transcribes_speech_with_segment_timestamps(
    sdk: openai.AsyncOpenAI, speech_wav: Path
) -> None:
    with speech_wav.open("rb") as audio:
        result = await sdk.audio.transcriptions.create(
            model="whisper-1",
            file=("speech.wav", audio),
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    heard = words_of(result.text)
    assert len(heard & set(CONTENT_WORDS)) >= 0.75 * len(CONTENT_WORDS), result.text
    assert result.language == "english"
    assert 8 < result.duration < 15
    segments = result.segments or []
    assert segments
    assert segments[0].start >= 0
    assert all(s.start <= s.end for s in segments)
    assert all(a.end <= b.start + 0.01 for a, b in itertools.pairwise(segments))
    assert segments[-1].end <= result.duration + 0.5


@pytest.mark.slow
@pytest.mark.parametrize(
    "media",
    [
        ("short.ogg", "libopus", False),
        ("short.mp3", "libmp3lame", False),
        ("short.m4a", "aac", False),
        ("short.webm", "libopus", False),
        ("short.mp4", "aac", True),
        ("short.mov", "aac", True),
    ],
)
async def test_transcribes_any_container_pyav_decodes(
    sdk: openai.AsyncOpenAI, short_wav: Path, tmp_path: Path, media: tuple[str, str, bool]
) -> None:
    name, codec, video = media
    path = convert(short_wav, tmp_path / name, codec, video=video)
    with path.open("rb") as audio:
        result = await sdk.audio.transcriptions.create(model="whisper-1", file=(name, audio))
    # Lossy codecs blur espeak's robot voice a little ("finance team" once came out "fire
    # scene" from Opus): most content words, not all, must survive.
    heard = {"please", "send", "budget", "report", "finance", "team"} & words_of(result.text)
    assert len(heard) >= 4, result.text


@pytest.mark.slow
async def test_text_and_subtitle_formats(
    model_http: httpx2.AsyncClient, short_wav_bytes: bytes
) -> None:
    data = short_wav_bytes
    bodies = {}
    for response_format in ("text", "srt", "vtt"):
        response = await model_http.post(
            "/v1/audio/transcriptions",
            data={
                "model": "faster-whisper-tiny.en",
                "response_format": response_format,
                "language": "en",
            },
            files={"file": ("short.wav", data, "audio/wav")},
        )
        assert response.status_code == 200, response.text
        bodies[response_format] = response.text
    assert "budget" in bodies["text"].lower()
    assert re.match(r"1\n00:00:00,000 --> 00:00:0\d,\d{3}\n", bodies["srt"])
    assert bodies["vtt"].startswith("WEBVTT\n\n00:00:00.000 --> ")


async def test_word_timestamps(model_http: httpx2.AsyncClient, short_wav_bytes: bytes) -> None:
    response = await model_http.post(
        "/v1/audio/transcriptions",
        data={
            "model": "whisper-1",
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
        files={"file": ("short.wav", short_wav_bytes)},
    )
    body = response.json()
    words = body["words"]
    assert [w["word"].lower().strip(".,") for w in words[:2]] == ["please", "send"]
    assert all(w["start"] <= w["end"] for w in words)
    assert body["segments"][0]["tokens"]


@pytest.mark.parametrize(
    ("data", "files", "status", "param"),
    [
        ({"model": "whisper-1"}, None, 400, "file"),
        ({}, {"file": ("a.wav", b"RIFF")}, 400, "model"),
        ({"model": "whisper-1"}, {"file": ("notes.txt", b"not audio at all " * 50)}, 400, "file"),
        ({"model": "whisper-1"}, {"file": ("empty.mp3", b"")}, 400, "file"),
        (
            {"model": "whisper-1", "response_format": "docx"},
            {"file": ("a.wav", b"x")},
            400,
            "response_format",
        ),
        ({"model": "whisper-1", "language": "fr"}, {"file": ("a.wav", b"x")}, 400, "language"),
        (
            {"model": "whisper-1", "timestamp_granularities[]": "char"},
            {"file": ("a.wav", b"x")},
            400,
            "timestamp_granularities",
        ),
        ({"model": "whisper-large"}, {"file": ("a.wav", b"x")}, 404, "model"),
    ],
)
async def test_bad_transcription_requests_get_openai_errors(
    model_http: httpx2.AsyncClient, data: dict[str, Any], files: Any, status: int, param: str
) -> None:
    response = await model_http.post("/v1/audio/transcriptions", data=data, files=files)
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param


async def test_an_upload_over_the_limit_is_refused_unread(local_models: LocalModels) -> None:
    small = create_model_app(local_models, preload=False, max_upload_bytes=10_000)
    transport = httpx2.ASGITransport(app=small)
    async with httpx2.AsyncClient(transport=transport, base_url="http://m.test") as client:
        response = await client.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("big.wav", b"\0" * 20_000)},
        )
    assert response.status_code == 413
    assert error_of(response)["code"] == "file_too_large"


# Chat.


def context_messages(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": format_context(PASSAGES)},
        {"role": "user", "content": question},
    ]


async def test_chat_answers_with_cited_sentences(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.chat.completions.create(
        model=CHAT,
        messages=context_messages("When is the launch, and why did it move?"),
    )
    answer = response.choices[0].message.content or ""
    assert "The launch date moved to May 14" in answer
    assert cited_numbers(answer) == [3]
    assert answer.endswith(" [3]")
    assert response.choices[0].finish_reason == "stop"
    assert response.model == CHAT
    assert response.usage is not None
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


async def test_chat_streams_openai_chunks(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=CHAT,
        messages=context_messages("Who are we hiring?"),
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str | None] = []
    usage = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish.append(choice.finish_reason)
    answer = "".join(pieces)
    assert "Two backend engineers start in March. [1]" in answer
    assert len(pieces) > 5
    assert finish[-1] == "stop"
    assert usage is not None
    assert usage.completion_tokens > 0


async def test_the_sse_wire_format(model_http: httpx2.AsyncClient) -> None:
    response = await model_http.post(
        "/v1/chat/completions",
        json={"model": CHAT, "messages": context_messages("Who are we hiring?"), "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first  # only when stream_options.include_usage asks for it


async def test_chat_without_an_answer_in_context_says_so(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.chat.completions.create(
        model=CHAT,
        messages=context_messages("What is the capital of Mongolia?"),
    )
    assert response.choices[0].message.content == NOT_FOUND


async def test_chat_without_context_says_so(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Hello?"}],
    )
    assert response.choices[0].message.content == NO_CONTEXT


async def test_max_tokens_cuts_the_answer(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.chat.completions.create(
        model=CHAT,
        messages=context_messages("When is the launch?"),
        max_tokens=4,
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 4


TRANSCRIPT = (
    "Welcome to the weekly product sync. The main topic today is the mobile app launch. "
    "The mobile app launch is planned for the first week of June. Testing of the mobile app "
    "found three critical bugs in the payment flow. Maria will fix the payment bugs by Friday. "
    "We should also update the app store screenshots. The weather was nice this weekend. "
    "Let's schedule a launch rehearsal for next Tuesday. John needs to prepare the release notes."
)


async def test_json_mode_writes_an_extractive_document(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.chat.completions.create(
        model=CHAT,
        response_format={"type": "json_object"},
        messages=[
            {"role": "system", "content": DOCUMENT_INSTRUCTIONS},
            {"role": "user", "content": TRANSCRIPT},
        ],
    )
    document = json.loads(response.choices[0].message.content or "")
    assert set(document) == {"title", "summary", "key_points", "action_items"}
    assert "mobile app" in document["title"].lower() or "launch" in document["title"].lower()
    assert "weather" not in document["summary"]
    assert len(document["key_points"]) == len(set(document["key_points"])) >= 3
    assert all(point in TRANSCRIPT for point in document["key_points"])
    assert document["action_items"] == [
        "Maria will fix the payment bugs by Friday.",
        "We should also update the app store screenshots.",
        "Let's schedule a launch rehearsal for next Tuesday.",
        "John needs to prepare the release notes.",
    ]


async def test_json_mode_streams_too_and_handles_an_empty_transcript(
    sdk: openai.AsyncOpenAI,
) -> None:
    stream = await sdk.chat.completions.create(
        model=CHAT,
        response_format={"type": "json_object"},
        stream=True,
        messages=[
            {"role": "system", "content": DOCUMENT_INSTRUCTIONS},
            {"role": "user", "content": "   "},
        ],
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert json.loads(text) == {
        "title": "Untitled recording",
        "summary": "",
        "key_points": [],
        "action_items": [],
    }


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": CHAT, "messages": []}, 400, "messages"),
        ({"model": CHAT, "messages": [{"role": "system", "content": "[1] x"}]}, 400, "messages"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
        ({"model": CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ],
)
async def test_bad_chat_requests_get_openai_errors(
    model_http: httpx2.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    response = await model_http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param


async def test_content_parts_are_read_as_text(model_http: httpx2.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": format_context(PASSAGES)}]},
        {"role": "user", "content": [{"type": "text", "text": "Where is lunch now?"}]},
    ]
    response = await model_http.post(
        "/v1/chat/completions", json={"model": CHAT, "messages": messages}
    )
    assert "Lunch moves to the terrace. [2]" in response.json()["choices"][0]["message"]["content"]


# Models, health, errors.


async def test_models_are_listed(sdk: openai.AsyncOpenAI) -> None:
    ids = [model.id async for model in sdk.models.list()]
    assert ids == ["all-minilm-l6-v2", "faster-whisper-tiny.en", CHAT]
    assert (await sdk.models.retrieve(CHAT)).id == CHAT
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("gpt-4o")


async def test_unknown_routes_answer_in_openai_shape(model_http: httpx2.AsyncClient) -> None:
    response = await model_http.get("/v1/nothing")
    assert response.status_code == 404
    assert error_of(response)["type"] == "invalid_request_error"


async def test_health_and_readiness(model_http: httpx2.AsyncClient) -> None:
    health = await model_http.get("/healthz")
    assert health.json() == {"status": "ok", "models": {"embeddings": True, "transcription": True}}
    assert (await model_http.get("/readyz")).status_code == 200

    cold = create_model_app(LocalModels(), preload=False)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=cold), base_url="http://m.test"
    ) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False


async def test_preloading_at_startup(local_models: LocalModels) -> None:
    app = create_model_app(local_models)  # already loaded: start-up returns at once
    async with LifespanManager(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://m.test") as client:
            assert (await client.get("/readyz")).status_code == 200
