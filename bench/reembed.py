"""Re-embedding throughput against the bare model's, in the same run (#17 item 5).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.reembed [--chunks 1500] [--orgs 3]
        [--concurrency 1] [--rounds 2]

A PostgreSQL of its own (the production roles, migrated) holds ``--chunks`` chunks of ~250
tokens (the size ``worker.chunking`` makes) across ``--orgs`` orgs, with 384-dim vectors in
generation 1. Then, alternating (bare, re-embed, bare, ...):

- **bare model**: ``LocalModels.embed`` on the same texts, in-process: the most the model can
  do here, and the baseline.
- **re-embed**: ``record reindex``'s path into a new generation of the same model
  (``worker.reindex``): the plan, the procrastinate jobs run by the real worker as the worker's
  role (``REEMBED_CHUNKS_PER_SECOND=0``: unthrottled), each step's texts sent through
  ``EmbeddingClient`` -> openai SDK -> ``/v1/embeddings`` of the real model server (in-process
  ASGI: our protocol, not the network) and written back under row-level security. Timed from
  the first job's start to the last batch marked done: chunks re-embedded *and written* per
  second. The catch-up, the HNSW build (CONCURRENTLY), the switch and the drop are timed
  apart: they are per re-embed, not per chunk.

The figure to watch is re-embed / bare (goal >= 0.8), each re-embed against the mean of the
bare runs either side of it: what the jobs, the HTTP layer and the writes cost on top of the
model. Each round re-embeds into a new generation.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import httpx2
import numpy as np
import psycopg

from app.ai.clients import ModelClients, ModelConfig
from app.ai.local_models import LocalModels
from app.ai.server import create_model_app
from app.kit.db import Database
from app.kit.redis import create_redis
from app.kit.storage import create_store
from app.settings import Settings
from bench.embeddings_model import chunk_texts
from bench.faultstack import ROLES, OwnPostgres, as_login, as_role
from worker import reindex
from worker.jobs import STATE, build_app
from worker.pipeline import PipelineDeps


def seed(url: str, texts: list[str], orgs: int) -> None:
    """Orgs, a recording each, the chunks spread over them; random unit vectors in gen 1."""
    rng = np.random.default_rng(7)
    with psycopg.connect(url) as conn:
        user = uuid.uuid4()
        conn.execute(
            "INSERT INTO users (id, email, name) VALUES (%s, 'bench@example.com', 'Bench')",
            (user,),
        )
        places = []
        for n in range(orgs):
            org, recording = uuid.uuid4(), uuid.uuid4()
            conn.execute("INSERT INTO orgs (id, name) VALUES (%s, %s)", (org, f"org {n}"))
            conn.execute(
                "INSERT INTO recordings (id, org_id, created_by, title, status) "
                "VALUES (%s, %s, %s, 'bench', 'ready')",
                (recording, org, user),
            )
            places.append((org, recording))
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY transcript_chunks (id, org_id, recording_id, idx, text, token_count, "
                "start_seconds, end_seconds, embedding) FROM STDIN"
            ) as copy,
        ):
            for i, text in enumerate(texts):
                org, recording = places[i % orgs]
                vector = rng.standard_normal(384).astype(np.float32)
                vector /= np.linalg.norm(vector)
                literal = "[" + ",".join(f"{x:.6f}" for x in vector) + "]"
                copy.write_row((uuid.uuid4(), org, recording, i, text, 250, i, i + 1, literal))
        conn.execute("ANALYZE transcript_chunks")


async def run_jobs(settings: Settings, concurrency: int) -> None:
    jobs = build_app(as_login(settings, ROLES.worker))
    async with jobs.open_async():
        await jobs.run_worker_async(
            queues=[reindex.REEMBED_QUEUE],
            wait=False,
            install_signal_handlers=False,
            concurrency=concurrency,
            listen_notify=False,
        )


async def reembed_round(
    owner: Settings, worker: Settings, models: ModelClients, concurrency: int
) -> tuple[int, float, float]:
    """(chunks, seconds for the jobs, seconds for catch-up + index + switch + drop)."""
    async with reindex.owner_connection(owner) as conn:
        space = await reindex.begin(conn, owner, force=True)
        assert space is not None
        await reindex.defer_batches(conn, space)
        started = time.perf_counter()
        await run_jobs(worker, concurrency)
        jobs_seconds = time.perf_counter() - started
        done = await reindex.progress(conn, space)
        assert done.remaining == 0, done
        started = time.perf_counter()
        await reindex.finish(conn, space, models, owner)
        return done.done, jobs_seconds, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1500)
    parser.add_argument("--orgs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="the worker's jobs at once")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    local = LocalModels()
    # A transcript's worth of chunks, repeated with a number in front: chunking a transcript as
    # long as the whole set would take longer than the bench (the chunker is not what's timed).
    sample = chunk_texts(40)
    texts = [f"{i}. {sample[i % len(sample)]}" for i in range(args.chunks)]
    local.embed(texts[:64])  # loaded and warm before anything is timed
    database = OwnPostgres()
    database.create()
    try:
        seed(as_role(database.url, ROLES.owner), texts, args.orgs)
        print(f"set up in {time.perf_counter() - started:.0f} s", flush=True)
        bare, rates, finishes = await measure(database.url, local, texts, args)
    finally:
        database.remove()

    ratios = [rate / ((bare[i] + bare[i + 1]) / 2) for i, rate in enumerate(rates)]
    print(
        f"{len(texts)} chunks of ~250 tokens, {args.orgs} orgs, worker concurrency "
        f"{args.concurrency}, {args.rounds} rounds:"
    )
    print(f"  bare model (LocalModels.embed)   chunks/s {_list(bare)}")
    print(f"  re-embed (jobs, HTTP, written)   chunks/s {_list(rates)}")
    print(
        f"  ratio re-embed / bare either side: {_list(ratios, 3)}; median "
        f"{statistics.median(ratios):.3f}   (goal >= 0.8)"
    )
    print(f"  catch-up + HNSW + switch + drop       {statistics.median(finishes):8.2f} s")


async def measure(
    url: str, local: LocalModels, texts: list[str], args: argparse.Namespace
) -> tuple[list[float], list[float], list[float]]:
    settings = Settings(
        database_url=url,
        redis_url="redis://127.0.0.1:9/0",  # never used: a re-embed bypasses the cache
        openai_base_url="http://models.bench/v1",
        reembed_chunks_per_second=0,
        database_pool_min=1,
        database_pool_max=4,
        log_level="WARNING",
    )
    owner, worker = as_login(settings, ROLES.owner), as_login(settings, ROLES.worker)
    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=create_model_app(local, preload=False)), timeout=600
    )
    models = ModelClients.from_settings(
        settings, config=ModelConfig(max_retries=0), http_client=http
    )
    db = Database(worker, check_connections=True)
    await db.open()
    redis = create_redis(settings.redis_url, timeout=1.0)
    STATE.deps = PipelineDeps(
        settings=worker, db=db, store=create_store(settings), models=models, redis=redis
    )
    bare: list[float] = []
    rates: list[float] = []
    finishes: list[float] = []
    try:
        async with reindex.owner_connection(owner) as conn:
            await reindex.adopt(conn, settings)
        # Bare, re-embed, bare, re-embed, ..., bare: each re-embed is compared with the bare
        # runs either side of it, so a neighbour's load on this shared machine weighs on both.
        bare.append(await bare_rate(local, texts))
        for _ in range(args.rounds):
            chunks, jobs_seconds, finish_seconds = await reembed_round(
                owner, worker, models, args.concurrency
            )
            rates.append(chunks / jobs_seconds)
            finishes.append(finish_seconds)
            bare.append(await bare_rate(local, texts))
            print(
                f"  round {len(rates)}: re-embed {rates[-1]:.1f} chunks/s, bare {bare[-2]:.1f}"
                f" and {bare[-1]:.1f}",
                flush=True,
            )
    finally:
        STATE.deps = None
        await db.close()
        await models.aclose()
        await redis.aclose()
    return bare, rates, finishes


async def bare_rate(local: LocalModels, texts: list[str]) -> float:
    started = time.perf_counter()
    await asyncio.to_thread(local.embed, texts)
    return len(texts) / (time.perf_counter() - started)


def _list(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


if __name__ == "__main__":
    asyncio.run(main())
