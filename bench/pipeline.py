"""The pipeline's three speed figures, each against a baseline measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.pipeline [--texts 256] [--chunks 10000] [--rounds 3]

1. Transcription real-time factor (seconds of work per second of audio) of espeak-ng speech,
   through the pipeline's path (PyAV decode to 16 kHz WAV, then the OpenAI-protocol client to
   the local model server) and, as the baseline, the bare faster-whisper model on the same file.
2. Embedding throughput through the pipeline (``worker.pipeline.embed_with_cache`` with a cold
   cache: Redis look-up, OpenAI-protocol client, the model server, Redis write) as a ratio of
   the bare model's throughput (``SentenceTransformer.encode``) on the same texts. Goal 0.9.
3. Writing 10,000 chunks with their 384-dim embeddings as the application role under
   row-level security: binary COPY into a staging table + one INSERT ... SELECT (what the
   worker does) vs one INSERT per round trip and vs ``executemany`` (psycopg 3 pipelines
   it; vectors go binary both ways), in three settings: as deployed (HNSW, GIN, the
   generated tsvector, keys, RLS); without the HNSW and GIN indexes; and a bare UNLOGGED
   table with only the columns, where nothing but the way of inserting costs anything —
   the most COPY can gain over the others on this machine. Goal: 5 times executemany.

The model server runs in-process over ASGI (no sockets), so the figure is our protocol layer's
cost, not the loopback's. PostgreSQL and Valkey are the embedded servers, started here.
Rounds alternate baseline and contender; the median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from bench.stack import bench_stack

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPEECH = (
    "The quarterly budget meeting starts now. Alice will send the marketing report on Friday. "
    "We need to hire two engineers before the product launch in May. The payment provider "
    "asked for another round of security testing. Let's schedule a rehearsal for the launch "
    "next Tuesday."
)


async def bench_copy(settings, n: int, rounds: int, *, fresh_org: bool = False) -> dict[str, float]:
    """Median seconds to write ``n`` chunks as record_app, three ways, indexes as deployed:
    one INSERT per round trip (the naive baseline), ``executemany`` (psycopg 3 pipelines it),
    and the worker's staged binary COPY + INSERT ... SELECT."""
    from app.kit.db import Database
    from app.transcripts.repository import CHUNK_COLUMNS, ChunkRow, replace_chunks

    db = Database(settings, statement_timeout_ms=settings.worker_statement_timeout_ms)
    await db.open()
    org_id, recording_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with db.pool.connection() as conn:
        await conn.execute("RESET ROLE")  # set-up as the owner
        if fresh_org:
            await conn.execute("TRUNCATE transcript_chunks, recordings, orgs CASCADE")
        await conn.execute("INSERT INTO orgs (id, name) VALUES (%s, 'bench')", (org_id,))
        await conn.execute(
            "INSERT INTO recordings (id, org_id, title) VALUES (%s, %s, 'bench')",
            (recording_id, org_id),
        )
        await conn.commit()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    rows = [
        ChunkRow(i, f"chunk {i} " + "word " * 150, 160, i * 10.0, i * 10.0 + 9.5, vectors[i])
        for i in range(n)
    ]
    insert = (
        f"INSERT INTO transcript_chunks ({CHUNK_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )

    def params() -> list[tuple]:
        return [
            (
                uuid.uuid4(),
                org_id,
                recording_id,
                r.idx,
                r.text,
                r.token_count,
                r.start_seconds,
                r.end_seconds,
                r.embedding,
            )
            for r in rows
        ]

    async def one_by_one(conn) -> None:
        for values in params():
            await conn.execute(insert, values)

    async def executemany(conn) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(insert, params())

    async def staged_copy(conn) -> None:
        await replace_chunks(conn, org_id=org_id, recording_id=recording_id, chunks=rows)

    ways = {"one_by_one": one_by_one, "executemany": executemany, "copy": staged_copy}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, write in ways.items():
            async with db.pool.connection() as conn:
                await conn.execute("RESET ROLE")
                await conn.execute("TRUNCATE transcript_chunks")  # no dead index entries
                await conn.commit()
            started = time.perf_counter()
            async with db.transaction(org_id=org_id, user_id=user_id) as conn:
                await write(conn)
            times[name].append(time.perf_counter() - started)
            async with db.transaction(org_id=org_id, user_id=user_id) as conn:
                cur = await conn.execute("SELECT count(*) AS n FROM transcript_chunks")
                row = await cur.fetchone()
                assert row is not None
                assert row["n"] == n, (name, row)
    await db.close()
    return {name: statistics.median(values) for name, values in times.items()}


def bench_ceiling(url: str, n: int, rounds: int) -> dict[str, float]:
    """The same three ways into a bare UNLOGGED table with the chunk columns and nothing else (no
    keys, indexes, generated column, RLS or WAL), as the owner, COPY straight in: what the ways
    of inserting cost when no per-row work is shared. The upper bound of COPY's advantage."""
    from pgvector.psycopg import register_vector

    from app.transcripts.repository import CHUNK_COLUMNS, CHUNK_TYPES

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    org_id, recording_id = uuid.uuid4(), uuid.uuid4()
    text = "chunk " + "word " * 150
    rows = [
        (uuid.uuid4(), org_id, recording_id, i, text, 160, i * 10.0, i * 10.0 + 9.5, vectors[i])
        for i in range(n)
    ]
    insert = f"INSERT INTO bare_chunks ({CHUNK_COLUMNS}) VALUES ({', '.join(['%s'] * 9)})"

    def one_by_one(conn: psycopg.Connection) -> None:
        for row in rows:
            conn.execute(insert, row)

    def executemany(conn: psycopg.Connection) -> None:
        with conn.cursor() as cur:
            cur.executemany(insert, rows)

    def copy(conn: psycopg.Connection) -> None:
        statement = f"COPY bare_chunks ({CHUNK_COLUMNS}) FROM STDIN WITH (FORMAT BINARY)"
        with conn.cursor() as cur, cur.copy(statement) as writer:
            writer.set_types(CHUNK_TYPES)
            for row in rows:
                writer.write_row(row)

    ways = {"one_by_one": one_by_one, "executemany": executemany, "copy": copy}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute(
            "CREATE UNLOGGED TABLE bare_chunks (id uuid, org_id uuid, recording_id uuid, "
            "idx bigint, text text, token_count bigint, start_seconds float8, "
            "end_seconds float8, embedding vector(384))"
        )
        conn.commit()
        for _ in range(rounds):
            for name, write in ways.items():
                conn.execute("TRUNCATE bare_chunks")
                conn.commit()
                started = time.perf_counter()
                with conn.transaction():
                    write(conn)
                times[name].append(time.perf_counter() - started)
        conn.execute("DROP TABLE bare_chunks")
    return {name: statistics.median(values) for name, values in times.items()}


async def bench_models(settings, texts_count: int, rounds: int, base: Path) -> dict[str, float]:
    import httpx2
    from redis.asyncio import Redis

    from app.ai.clients import ModelClients, ModelConfig
    from app.ai.local_models import LocalModels
    from app.ai.server import create_model_app
    from app.kit.db import Database
    from app.kit.storage import FileStore
    from bench.embeddings_model import chunk_texts
    from worker.pipeline import PipelineDeps, decode_to_wav, embed_with_cache

    models = LocalModels()
    models.load_all()
    app = create_model_app(models, preload=False)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), timeout=600)
    clients = ModelClients.from_settings(
        settings, config=ModelConfig(max_retries=0), http_client=http
    )
    redis = Redis.from_url(settings.redis_url)
    deps = PipelineDeps(
        settings=settings,
        db=Database(settings),
        store=FileStore(base / "objects"),
        models=clients,
        redis=redis,
    )
    # The worker's real chunks: ~200-token pieces of meeting speech.
    texts = chunk_texts(texts_count)
    speech = base / "speech.wav"
    await asyncio.to_thread(
        subprocess.run, ["espeak-ng", "-w", str(speech), " ".join([SPEECH] * 4)], check=True
    )

    bare_e, pipe_e, bare_t, pipe_t = [], [], [], []
    duration = 0.0
    for round_no in range(rounds):
        started = time.perf_counter()
        await asyncio.to_thread(models.embed, texts)
        bare_e.append(time.perf_counter() - started)
        await redis.flushdb()  # cold cache: every text goes to the model
        unique = [f"{text} ({round_no})" for text in texts]
        started = time.perf_counter()
        vectors = await embed_with_cache(deps, unique)
        pipe_e.append(time.perf_counter() - started)
        assert len(vectors) == len(texts)

        started = time.perf_counter()
        duration = (await asyncio.to_thread(models.transcribe, str(speech))).duration
        bare_t.append(time.perf_counter() - started)
        started = time.perf_counter()
        wav = base / "decoded.wav"
        await asyncio.to_thread(decode_to_wav, speech, wav)
        await clients.transcription.transcribe(wav)
        pipe_t.append(time.perf_counter() - started)
    await clients.aclose()
    await redis.aclose()
    return {
        "texts": len(texts),
        "bare_embed": statistics.median(bare_e),
        "pipe_embed": statistics.median(pipe_e),
        "duration": duration,
        "bare_transcribe": statistics.median(bare_t),
        "pipe_transcribe": statistics.median(pipe_t),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("espeak-ng"):
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")

    with bench_stack("record-bench-", openai_base_url="http://models.bench/v1") as settings:
        writes = await bench_copy(settings, args.chunks, args.rounds)
        # The same writes without the HNSW and GIN indexes: what the write path itself costs,
        # apart from the index maintenance every way of inserting pays alike.
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("DROP INDEX transcript_chunks_embedding_hnsw_idx")
            conn.execute("DROP INDEX transcript_chunks_tsv_idx")
        bare_writes = await bench_copy(settings, args.chunks, args.rounds, fresh_org=True)
        ceiling = bench_ceiling(settings.database_url, args.chunks, args.rounds)
        m = await bench_models(settings, args.texts, args.rounds, settings.state_dir)

    bare_rate, pipe_rate = m["texts"] / m["bare_embed"], m["texts"] / m["pipe_embed"]
    print(f"\n{'figure':<58}{'baseline':>12}{'record':>12}{'ratio':>9}")
    rtf_label = f"transcription RTF, {m['duration']:.0f} s of speech (bare model / pipeline)"
    bare_rtf, pipe_rtf = m["bare_transcribe"] / m["duration"], m["pipe_transcribe"] / m["duration"]
    print(f"{rtf_label:<58}{bare_rtf:>12.3f}{pipe_rtf:>12.3f}{bare_rtf / pipe_rtf:>9.2f}")
    embed_label = f"embeddings/s, {m['texts']} chunks (bare model / pipeline, goal >= 0.9)"
    print(f"{embed_label:<58}{bare_rate:>12.1f}{pipe_rate:>12.1f}{pipe_rate / bare_rate:>9.2f}")
    n = args.chunks
    blocks = (
        ("as deployed", writes),
        ("no HNSW/GIN index", bare_writes),
        ("bare table (ceiling)", ceiling),
    )
    for title, timing in blocks:
        copy_s = timing["copy"]
        for name in ("one_by_one", "executemany"):
            label = f"chunks/s, {n}, {title}: {name} / COPY"
            print(
                f"{label:<58}{n / timing[name]:>12.0f}{n / copy_s:>12.0f}"
                f"{timing[name] / copy_s:>9.2f}"
            )
    reached = writes["executemany"] / writes["copy"]
    ceiling_ratio = ceiling["executemany"] / ceiling["copy"]
    print(
        f"goal: COPY >= 5x executemany for {n} chunks: {'met' if reached >= 5 else 'MISSED'} "
        f"({reached:.2f}x as deployed; {ceiling_ratio:.2f}x into a bare table, the most any "
        "way of writing can gain over psycopg 3's pipelined executemany here)"
    )


if __name__ == "__main__":
    asyncio.run(main())
