"""Re-embedding without downtime, end to end (worker/reindex.py): two orgs' chunks move from
one embedding space (384 dimensions) to another (a second model at 256), through the real
procrastinate jobs as the worker's role, while searches through the API keep answering; a job
killed half-way resumes where it stopped; uploads during the re-embed land in both spaces;
the switch is atomic and the old column and its index are gone after it."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import httpx2
import numpy as np
import psycopg
import pytest
from prometheus_client import REGISTRY
from rich.console import Console

from app.ai.clients import SERVICES_KEY, ModelClients
from app.transcripts.repository import ChunkRow, replace_chunks
from tests.conftest import ROLES, as_login, as_role
from tests.worker.conftest import FakeOpenAI, fake_vector
from worker import reindex, reindex_cli
from worker.jobs import build_app
from worker.pipeline import PipelineDeps, store_chunks
from worker.reindex import Batch, Throttle

NEW_MODEL, NEW_DIMS = "text-embedding-3-small", 256


class SpacesFakeOpenAI(FakeOpenAI):
    """Embeddings per model: the new model's vectors differ from the old one's, cut to the
    ``dimensions`` asked for (as OpenAI's text-embedding-3 models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.new_space_texts: list[str] = []
        self.query_dims: list[int] = []
        self.kill_on_new_call: int | None = None  # raise CancelledError on that call

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.endswith("/embeddings"):
            return super().__call__(request)
        body = json.loads(request.content)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions", 384))
        if body["model"] == NEW_MODEL:
            self.new_space_texts += texts
            calls = len(self.new_space_texts)
            if self.kill_on_new_call is not None and calls > self.kill_on_new_call * 4:
                self.kill_on_new_call = None
                raise asyncio.CancelledError  # the job dies mid-range, as a killed worker's
        if len(texts) == 1 and texts[0].startswith("query"):
            self.query_dims.append(dims)
        data = []
        for i, text in enumerate(texts):
            vector = np.asarray(fake_vector(f"{body['model']}|{text}"), np.float32)[:dims]
            data.append(
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": (vector / np.linalg.norm(vector)).tolist(),
                }
            )
        return httpx2.Response(
            200,
            json={
                "object": "list",
                "model": body["model"],
                "data": data,
                "usage": {"prompt_tokens": 10, "total_tokens": 10},
            },
        )


@pytest.fixture
def fake_openai() -> SpacesFakeOpenAI:
    return SpacesFakeOpenAI()


@pytest.fixture
def worker_settings(worker_settings: Any) -> Any:
    # Four chunks a step, ten a job: a range takes three steps, an org several jobs.
    return worker_settings.model_copy(
        update={"embedding_batch_size": 4, "reembed_job_chunks": 10, "reembed_chunks_per_second": 0}
    )


async def _recording(
    settings: Any, deps: PipelineDeps, org: Any, n: int, *, legacy_only: bool = False
) -> str:
    recording_id = str(uuid.uuid4())
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO recordings (id, org_id, created_by, title, status) "
            "VALUES (%s, %s, %s, %s, 'ready')",
            (recording_id, org.org_id, org.user_id, f"meeting {recording_id[:6]}"),
        )
    rows = [
        ChunkRow(
            idx=i,
            text=f"{org.org_id[:4]} chunk {i} of {recording_id}",
            token_count=5,
            start_seconds=i * 5.0,
            end_seconds=i * 5.0 + 5,
            embedding=None,
        )
        for i in range(n)
    ]
    org_id, rec = uuid.UUID(org.org_id), uuid.UUID(recording_id)
    if legacy_only:  # as a pipeline that read the spaces before the re-embed began
        rows = [
            ChunkRow(
                r.idx,
                r.text,
                r.token_count,
                r.start_seconds,
                r.end_seconds,
                fake_vector(f"all-minilm-l6-v2|{r.text}"),
            )
            for r in rows
        ]
        async with deps.db.transaction(org_id=org_id) as conn:
            await replace_chunks(conn, org_id=org_id, recording_id=rec, chunks=rows)
    else:
        await store_chunks(deps, org_id, rec, rows)
    return recording_id


def _one(settings: Any, sql: str, *args: Any) -> Any:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(sql, args).fetchone()
        return row[0] if row else None


async def _run_jobs(worker_settings: Any) -> None:
    jobs = build_app(as_login(worker_settings, ROLES.worker))
    async with jobs.open_async():
        await jobs.run_worker_async(
            queues=[reindex.REEMBED_QUEUE],
            wait=False,
            install_signal_handlers=False,
            concurrency=2,
            listen_notify=False,
        )


async def test_reembed_switches_with_search_answering_throughout(
    app: Any,
    client: Any,
    org_a: Any,
    org_b: Any,
    deps: PipelineDeps,
    worker_settings: Any,
    fake_openai: SpacesFakeOpenAI,
    settings: Any,
) -> None:
    # The API embeds queries through the same fake.
    api_models = ModelClients.from_settings(
        worker_settings, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake_openai))
    )
    app.state.services.extras[SERVICES_KEY] = api_models
    recordings = {
        org_a.org_id: {
            await _recording(settings, deps, org_a, 23),
            await _recording(settings, deps, org_a, 12),
        },
        org_b.org_id: {await _recording(settings, deps, org_b, 17)},
    }
    total = 23 + 12 + 17

    answers: list[tuple[int, str, set[str]]] = []
    stop = asyncio.Event()

    async def poll() -> None:
        n = 0
        while not stop.is_set():
            for org in (org_a, org_b):
                n += 1
                response = await client.post(
                    "/api/search",
                    headers=org.auth(),
                    json={"query": f"query {n}", "mode": "vector", "limit": 5},
                )
                found = {hit["recording_id"] for hit in response.json().get("results", [])}
                answers.append((response.status_code, org.org_id, found))
            await asyncio.sleep(0.01)

    metric_before = REGISTRY.get_sample_value("record_reembed_chunks_total") or 0.0
    poller = asyncio.create_task(poll())
    owner = settings.model_copy(
        update={
            "database_url": as_role(settings.database_url, ROLES.owner),
            "embedding_model": NEW_MODEL,
            "embedding_dimensions": NEW_DIMS,
            "reembed_job_chunks": 10,
            "embedding_batch_size": 4,
            "openai_base_url": "http://fake-openai.test/v1",
            "openai_max_retries": 0,
        }
    )
    out = io.StringIO()
    console = Console(file=out, width=400)
    owner_models = ModelClients.from_settings(
        owner, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake_openai))
    )
    try:
        # `record reindex`: the model's not recorded yet; recorded; then the re-embed begins.
        assert await reindex_cli.run(owner, wait=False, console=console, models=owner_models) == 1
        assert "record reindex --adopt" in out.getvalue()
        assert await reindex_cli.run(settings, adopt=True, console=console) == 0
        # A model that cannot give the dimensions asked for is refused before anything begins.
        cut = owner.model_copy(update={"embedding_model": "all-minilm-l6-v2"})
        assert await reindex_cli.run(cut, wait=False, console=console, models=owner_models) == 1
        assert "cannot give 256-dimensional vectors" in out.getvalue()
        assert _one(settings, "SELECT count(*) FROM embedding_spaces") == 1
        assert await reindex_cli.run(owner, wait=False, console=console, models=owner_models) == 0
        assert "6 jobs queued" in out.getvalue()  # per org, ten chunks a job: 4 + 2
        async with reindex.owner_connection(owner) as conn:
            space = await reindex.begin(conn, owner)  # a second run resumes it
            assert space is not None
            assert (space.generation, space.dimensions) == (2, NEW_DIMS)
            assert (await reindex.progress(conn, space)).chunks == total
            assert await reindex.defer_batches(conn, space) == 0  # already queued

            # Killed half-way through its first range: the first step (4 chunks) stays.
            first = await conn.execute(
                "SELECT org_id, first_id, last_id FROM embedding_batches "
                "ORDER BY org_id, first_id LIMIT 1"
            )
            row = await first.fetchone()
            assert row is not None
            batch = Batch(2, row["org_id"], row["first_id"], row["last_id"])
            fake_openai.new_space_texts.clear()  # the probe's one text
            fake_openai.kill_on_new_call = 1
            with pytest.raises(asyncio.CancelledError):
                await reindex.reembed_batch(deps, batch)
            assert _one(settings, "SELECT count(*) FROM chunk_embeddings_2") == 4

            # An upload while the re-embed runs: embedded in both spaces at once.
            late = await _recording(settings, deps, org_b, 3)
            recordings[org_b.org_id].add(late)
            assert (
                _one(
                    settings,
                    "SELECT count(*) FROM chunk_embeddings_2 e JOIN "
                    "transcript_chunks c USING (id) WHERE c.recording_id = %s",
                    late,
                )
                == 3
            )
            # One written by a pipeline that read the spaces before the re-embed began.
            stale = await _recording(settings, deps, org_a, 2, legacy_only=True)
            recordings[org_a.org_id].add(stale)

            await _run_jobs(worker_settings)  # every job, the killed range's included
            # The metrics: every chunk counted once (the two stale ones if a job found them).
            counted = (
                REGISTRY.get_sample_value("record_reembed_chunks_total") or 0.0
            ) - metric_before
            assert total <= counted <= total + 2
            assert REGISTRY.get_sample_value("record_reembed_remaining_chunks") == 0
            done = await reindex.progress(conn, space)
            assert done.remaining == 0
            # Resumed, not redone: only the killed step's four texts were embedded twice (and
            # the two stale chunks, if their ids fell in a range, by the jobs already).
            assert total + 3 + 4 <= len(fake_openai.new_space_texts) <= total + 3 + 4 + 2
            assert (
                _one(settings, "SELECT state FROM embedding_spaces WHERE generation = 1")
                == "active"
            )

        # Every batch done: the command follows (its bar full at once) and switches.
        assert (
            await reindex_cli.run(owner, console=console, models=owner_models, poll_seconds=0.05)
            == 0
        )
        assert f"{total}/{total}" in out.getvalue()
        assert "Dropped transcript_chunks.embedding" in out.getvalue()
        await asyncio.sleep(0.2)  # a few searches in the new space
    finally:
        stop.set()
        await poller
        await owner_models.aclose()
        await api_models.aclose()

    # Search answered throughout, every time, with the asking org's recordings only.
    assert answers
    assert all(status == 200 for status, _, _ in answers), answers[:3]
    assert all(found and found <= recordings[org] for _, org, found in answers)
    assert {256, 384} <= set(fake_openai.query_dims)  # both spaces were searched
    assert fake_openai.query_dims[-1] == NEW_DIMS

    # Switched: every chunk in the new space, the old column and its index gone.
    assert _one(settings, "SELECT generation FROM embedding_spaces WHERE state = 'active'") == 2
    assert _one(settings, "SELECT count(*) FROM chunk_embeddings_2") == total + 3 + 2
    assert (
        _one(
            settings,
            "SELECT count(*) FROM information_schema.columns WHERE "
            "table_name = 'transcript_chunks' AND column_name = 'embedding'",
        )
        == 0
    )
    assert _one(settings, "SELECT to_regclass('transcript_chunks_embedding_hnsw_idx')") is None
    assert (
        _one(
            settings,
            "SELECT indisvalid FROM pg_index WHERE indexrelid = "
            "'chunk_embeddings_2_embedding_hnsw_idx'::regclass",
        )
        is True
    )

    # After the switch: uploads go to the new space only; each org sees its own vectors.
    after = await _recording(settings, deps, org_a, 2)
    assert (
        _one(
            settings,
            "SELECT vector_dims(embedding) FROM chunk_embeddings_2 e "
            "JOIN transcript_chunks c USING (id) WHERE c.recording_id = %s LIMIT 1",
            after,
        )
        == NEW_DIMS
    )
    for org, recs in (
        (org_a, recordings[org_a.org_id] | {after}),
        (org_b, recordings[org_b.org_id]),
    ):
        async with deps.db.transaction(org_id=uuid.UUID(org.org_id)) as conn:
            seen = await (
                await conn.execute(
                    "SELECT DISTINCT recording_id::text AS r FROM chunk_embeddings_2"
                )
            ).fetchall()
        assert {row["r"] for row in seen} == recs


async def test_throttle_spaces_chunks_at_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    throttle = Throttle(100.0, clock=lambda: now[0], sleep=fake_sleep)
    for _ in range(5):
        await throttle.take(50)  # 250 chunks at 100 a second: the last 200 wait 0.5 s each
    assert slept == pytest.approx([0.5, 0.5, 0.5, 0.5])
    unlimited = Throttle(0, clock=lambda: now[0], sleep=fake_sleep)
    await unlimited.take(10_000)  # 0: no limit
    assert len(slept) == 4
