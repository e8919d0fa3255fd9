"""Search and chat against the real database and Valkey, with the real models behind the real
model server (in-process): the questions and the chunks are embedded by the same MiniLM.

The fixtures are imported by ``tests/app/conftest.py``."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2
import psycopg
import pytest

from app.ai.clients import SERVICES_KEY, ModelClients
from app.ai.local_models import LocalModels
from app.kit.db import Database
from app.search.service import invalidate
from app.transcripts.repository import ChunkRow, replace_chunks

if TYPE_CHECKING:
    from tests.app.conftest import Tenant


class CountingTransport(httpx2.AsyncBaseTransport):
    """The model server's ASGI transport, counting calls per path; ``down`` answers 503."""

    def __init__(self, app: object) -> None:
        self.inner = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        self.calls: Counter[str] = Counter()
        self.bodies: dict[str, list[Any]] = {}  # the JSON each path was sent
        self.before: dict[str, Any] = {}  # path -> a callable run as the request arrives
        self.down = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls[request.url.path] += 1
        content = await request.aread()
        if content and request.headers.get("content-type", "").startswith("application/json"):
            self.bodies.setdefault(request.url.path, []).append(json.loads(content))
        if request.url.path in self.before:
            self.before[request.url.path]()
        if self.down:
            return httpx2.Response(503, json={"error": {"message": "models are down"}})
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def models(app: Any, model_app: object, settings: Any) -> AsyncIterator[CountingTransport]:
    """Point the API's model clients at the in-process model server."""
    transport = CountingTransport(model_app)
    clients = ModelClients.from_settings(
        settings.model_copy(
            update={"openai_base_url": "http://models.test/v1", "openai_max_retries": 0}
        ),
        http_client=httpx2.AsyncClient(transport=transport),
    )
    extras = app.state.services.extras
    original = extras[SERVICES_KEY]
    extras[SERVICES_KEY] = clients
    yield transport
    extras[SERVICES_KEY] = original
    await clients.aclose()


class Seeder:
    """Recordings with chunks, written the way the worker writes them (binary COPY through the
    staging table, as the app role under row-level security), embedded by the real model."""

    def __init__(self, settings: Any, local_models: LocalModels, redis: Any) -> None:
        self.settings = settings
        self.local_models = local_models
        self.redis = redis

    async def recording(
        self, tenant: Tenant, title: str, sentences: list[str], *, seconds_each: float = 5.0
    ) -> tuple[str, list[str]]:
        recording_id = str(uuid.uuid4())
        with psycopg.connect(self.settings.database_url) as conn:
            conn.execute(
                "INSERT INTO recordings (id, org_id, created_by, title, status) "
                "VALUES (%s, %s, %s, %s, 'ready')",
                (recording_id, tenant.org_id, tenant.user_id, title),
            )
        vectors = self.local_models.embed(sentences)
        rows = [
            ChunkRow(
                idx=i,
                text=text,
                token_count=len(text.split()),
                start_seconds=i * seconds_each,
                end_seconds=(i + 1) * seconds_each,
                embedding=vector,
            )
            for i, (text, vector) in enumerate(zip(sentences, vectors, strict=True))
        ]
        db = Database(self.settings)
        await db.open()
        try:
            org = uuid.UUID(tenant.org_id)
            async with db.transaction(org_id=org) as conn:
                await replace_chunks(
                    conn, org_id=org, recording_id=uuid.UUID(recording_id), chunks=rows
                )
        finally:
            await db.close()
        await invalidate(self.redis, uuid.UUID(tenant.org_id), self.settings)  # as the worker does
        with psycopg.connect(self.settings.database_url) as conn:
            ids = conn.execute(
                "SELECT id::text FROM transcript_chunks WHERE recording_id = %s ORDER BY idx",
                (recording_id,),
            ).fetchall()
        return recording_id, [row[0] for row in ids]


@pytest.fixture
def seeder(settings: Any, local_models: LocalModels, app: Any) -> Seeder:
    return Seeder(settings, local_models, app.state.services.redis)


# Two orgs' recordings for search and chat: org A's planning sync and offsite; org B says
# nearly what org A's budget sentence says, and must never surface for org A.
PLANNING = [
    "Maria will prepare the budget review by Friday.",
    "We need to hire two backend engineers before the launch.",
    "The database migration finished without errors last night.",
]
OFFSITE = [
    "The team offsite is booked for the second week of June.",
    "Everyone should send their travel plans to Tom.",
]
RIVAL = ["Maria prepares the budget review on Friday."]


@pytest.fixture
async def corpus(seeder: Seeder, org_a: Tenant, org_b: Tenant) -> dict[str, tuple[str, list[str]]]:
    return {
        "planning": await seeder.recording(org_a, "Planning sync", PLANNING),
        "offsite": await seeder.recording(org_a, "Offsite", OFFSITE),
        "rival": await seeder.recording(org_b, "Org B budget", RIVAL),
    }
