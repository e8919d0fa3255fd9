"""The worker against the real PostgreSQL, Valkey and storage; only OpenAI is faked: a small
OpenAI-protocol handler behind the SDK's transport, deterministic and countable."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import numpy as np
import pytest

from app.ai.clients import ModelClients
from app.kit.db import Database
from app.kit.redis import create_redis
from app.kit.storage import create_store
from tests.app.conftest import mailbox, org_a, org_b  # noqa: F401 - shared fixtures
from tests.conftest import ROLES, as_login
from worker.jobs import STATE
from worker.pipeline import PipelineDeps

SENTENCES = [
    "Welcome to the quarterly planning meeting.",
    "We will ship the search feature next month.",
    "Maria will prepare the budget review by Friday.",
    "The database migration finished without errors.",
]


OPENAI_MAX_UPLOAD = 25 * 1024 * 1024  # audio.transcriptions takes files up to 25 MB


def fake_vector(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


class FakeOpenAI:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.embedded: list[str] = []
        self.fail: dict[str, int] = {}  # path -> status to answer with
        self.fail_times: dict[str, int] = {}  # path -> how many more calls fail with 500
        self.upload_bytes: list[int] = []  # the size of each transcription request
        self.fail_calls: dict[str, set[int]] = {}  # path -> which calls (1, 2, ...) answer 500

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.calls[path] += 1
        if path in self.fail:
            return httpx2.Response(self.fail[path], json={"error": {"message": "boom"}})
        if self.calls[path] in self.fail_calls.get(path, set()) or self.fail_times.get(path, 0):
            if self.fail_times.get(path, 0):
                self.fail_times[path] -= 1
            return httpx2.Response(500, json={"error": {"message": "flaky"}})
        if path.endswith("/audio/transcriptions"):
            return self.transcription(request)
        if path.endswith("/embeddings"):
            body = json.loads(request.content)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            self.embedded += inputs
            return httpx2.Response(
                200,
                json={
                    "object": "list",
                    "model": body["model"],
                    "data": [
                        {"object": "embedding", "index": i, "embedding": fake_vector(t)}
                        for i, t in enumerate(inputs)
                    ],
                    "usage": {"prompt_tokens": 10, "total_tokens": 10},
                },
            )
        if path.endswith("/chat/completions"):
            content = json.dumps(
                {
                    "title": "Quarterly planning",
                    "summary": SENTENCES[1],
                    "key_points": SENTENCES[:2],
                    "action_items": [SENTENCES[2]],
                }
            )
            return httpx2.Response(
                200,
                json={
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "fake-chat",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                },
            )
        return httpx2.Response(404, json={"error": {"message": "no such route"}})

    def transcription(self, request: httpx2.Request) -> httpx2.Response:
        self.upload_bytes.append(len(request.content))
        if len(request.content) > OPENAI_MAX_UPLOAD:  # what OpenAI answers
            message = f"Maximum content size limit ({OPENAI_MAX_UPLOAD}) exceeded"
            return httpx2.Response(413, json={"error": {"message": message}})
        segments = [
            {
                "id": i,
                "seek": 0,
                "start": i * 2.0,
                "end": i * 2.0 + 1.8,
                "text": text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for i, text in enumerate(SENTENCES)
        ]
        return httpx2.Response(
            200,
            json={
                "task": "transcribe",
                "language": "english",
                "duration": 8.0,
                "text": " ".join(SENTENCES),
                "segments": segments,
            },
        )


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def worker_settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "openai_base_url": "http://fake-openai.test/v1",
            "job_max_attempts": 3,
            "job_retry_base_seconds": 0.0,
            "ratelimit_upload": "100/3600",
            # The SDK's own retries would hide the failures these tests inject.
            "openai_max_retries": 0,
        }
    )


@pytest.fixture
async def deps(worker_settings: Any, fake_openai: FakeOpenAI) -> AsyncIterator[PipelineDeps]:
    db = Database(as_login(worker_settings, ROLES.worker))  # the worker's own login role
    await db.open()
    redis = create_redis(worker_settings.redis_url, timeout=2.0)
    models = ModelClients.from_settings(
        worker_settings,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake_openai)),
    )
    pipeline_deps = PipelineDeps(
        settings=worker_settings,
        db=db,
        store=create_store(worker_settings),
        models=models,
        redis=redis,
    )
    STATE.deps = pipeline_deps
    try:
        yield pipeline_deps
    finally:
        STATE.deps = None
        await models.aclose()
        await redis.aclose()
        await db.close()
