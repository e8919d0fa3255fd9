"""Re-embedding every chunk into another embedding space while search keeps answering.

The settings' ``EMBEDDING_MODEL`` / ``EMBEDDING_DIMENSIONS`` name the space wanted; the
database's ``embedding_spaces`` (migration 0009) says which one search uses. ``record reindex``
closes the gap in five steps, each idempotent, so running it again after any interruption
resumes where the last run stopped:

1. **begin**: a *building* generation, its table ``chunk_embeddings_<n>`` (typed to the new
   dimensions, row-level security as every tenant table) and its plan: per org, ranges of
   chunk ids of ``REEMBED_JOB_CHUNKS`` chunks (``embedding_batches``).
2. **embed**: one procrastinate job per range (``reembed_batch``), low priority so uploads go
   first, in the org's transaction like any job. A job embeds the range's chunks that have no
   vector in the new table yet, ``EMBEDDING_BATCH_SIZE`` at a time, each step committed:
   killed, its retry (or the next ``record reindex``) starts at the first chunk without a
   vector. ``REEMBED_CHUNKS_PER_SECOND`` throttles each worker process. Meanwhile new uploads
   are embedded in both spaces (``worker.pipeline.store_chunks``).
3. **catch up**: chunks that appeared in ranges already done, or before the pipeline knew of
   the new space, are embedded here.
4. **index**: the new table's HNSW index, built CONCURRENTLY (writes go on; nobody searches
   the new table yet). A build killed half-way leaves an invalid index: dropped and rebuilt.
5. **switch**: one transaction locks the chunks against writers (SHARE: reads go on), embeds
   the few chunks still missing, and flips the active generation. Then the old generation's
   storage is dropped once no transaction that read the old space is left (an exclusive lock
   on ``embedding_spaces``, which every search holds while it ranks).

Steps 1 and 3-5 need the owner's rights (DDL, every org's chunks): ``record reindex`` runs as
the role that runs the migrations. Step 2 runs in the worker, bound by row-level security.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
import structlog
from pgvector.psycopg import register_vector_async
from psycopg import errors
from psycopg.rows import dict_row

from app.ai.clients import ModelClients
from app.kit.db import Conn, fetch_all, fetch_one, libpq_conninfo
from app.kit.errors import ExternalServiceError
from app.kit.metrics import REEMBED_CHUNKS, REEMBED_REMAINING
from app.kit.roles import APP_ROLE
from app.search import spaces
from app.search.spaces import ChunkVector, Space
from app.settings import Settings
from worker.pipeline import PipelineDeps

log = structlog.stdlib.get_logger(__name__)

REEMBED_QUEUE = "reembed"
REEMBED_TASK = "record.reembed_batch"
# procrastinate runs higher priorities first: uploads (priority 0) never wait behind a re-embed.
REEMBED_PRIORITY = -10
# HNSW build parameters of the original index (migration 0001).
HNSW_WITH = "m = 16, ef_construction = 64"


class ReindexError(RuntimeError):
    """What ``record reindex`` cannot do, in words for the operator."""


# -- throttling ----------------------------------------------------------------------------------


class Throttle:
    """At most ``per_second`` chunks a second on average, for this process (0: unlimited)."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_second = per_second
        self._clock = clock
        self._sleep = sleep
        self._next = clock()
        self._lock = asyncio.Lock()

    async def take(self, chunks: int) -> None:
        if self.per_second <= 0:
            return
        async with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + chunks / self.per_second
            wait = start - now
        if wait > 0:
            await self._sleep(wait)


_THROTTLES: dict[float, Throttle] = {}


def throttle_for(settings: Settings) -> Throttle:
    rate = settings.reembed_chunks_per_second
    return _THROTTLES.setdefault(rate, Throttle(rate))


# -- step 2: the job -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    generation: int
    org_id: UUID
    first_id: UUID
    last_id: UUID


async def _building(conn: Conn, generation: int) -> Space | None:
    return next(
        (
            s
            for s in await spaces.current(conn)
            if s.generation == generation and s.state == "building"
        ),
        None,
    )


async def reembed_batch(
    deps: PipelineDeps, batch: Batch, *, throttle: Throttle | None = None
) -> int:
    """Embed the batch's chunks that the new space lacks; returns how many were written.
    Each step commits its vectors, and the last marks the batch done: idempotent, resumable."""
    throttle = throttle or throttle_for(deps.settings)
    step = deps.settings.embedding_batch_size
    written = 0
    after: UUID | None = None  # the range is walked once per run, not once per step
    while True:
        async with deps.db.transaction(org_id=batch.org_id) as conn:
            space = await _building(conn, batch.generation)
            if space is None:  # switched (or abandoned) meanwhile: nothing left to do
                return written
            rows = await _missing_in_range(conn, space, batch, step, after)
            if not rows:
                await _mark_done(conn, batch)
                break
        after = rows[-1]["id"]
        await throttle.take(len(rows))
        models = spaces.models_for(deps.models, space, deps.settings)
        # Not through the embedding cache: a million vectors read once would only evict the
        # cache's useful entries.
        embedded = await models.embeddings.embed([row["text"] for row in rows])
        async with deps.db.transaction(org_id=batch.org_id) as conn:
            count = await spaces.write_vectors(conn, space, _vectors(rows, embedded.vectors))
            if len(rows) < step:
                await _mark_done(conn, batch)
        REEMBED_CHUNKS.inc(count)
        written += count
        if len(rows) < step:
            break
    await _report_remaining(deps)
    return written


async def _missing_in_range(
    conn: Conn, space: Space, batch: Batch, step: int, after: UUID | None
) -> list[Any]:
    """The next ``step`` chunks of the range (past ``after``) without a vector in ``space``."""
    return await fetch_all(
        conn,
        "SELECT c.id, c.org_id, c.recording_id, c.text FROM transcript_chunks AS c "  # noqa: S608 - checked name
        f"WHERE c.org_id = %(org)s AND c.id {'>=' if after is None else '>'} %(lower)s "
        "AND c.id <= %(last)s "
        f"AND NOT EXISTS (SELECT 1 FROM {space.relation} AS e WHERE e.id = c.id) "
        "ORDER BY c.id LIMIT %(step)s",
        {
            "org": batch.org_id,
            "lower": after or batch.first_id,
            "last": batch.last_id,
            "step": step,
        },
    )


def _vectors(rows: list[Any], vectors: list[list[float]]) -> list[ChunkVector]:
    return [
        ChunkVector(row["id"], row["org_id"], row["recording_id"], np.asarray(v, np.float32))
        for row, v in zip(rows, vectors, strict=True)
    ]


async def _mark_done(conn: Conn, batch: Batch) -> None:
    await conn.execute(
        "UPDATE embedding_batches SET done_at = now() WHERE generation = %s AND org_id = %s "
        "AND first_id = %s AND done_at IS NULL",
        (batch.generation, batch.org_id, batch.first_id),
    )


async def _report_remaining(deps: PipelineDeps) -> None:
    async with deps.db.transaction() as conn:
        row = await fetch_one(conn, "SELECT sum(chunks - done) AS left FROM app_reembed_progress()")
    REEMBED_REMAINING.set(float(row["left"] or 0) if row else 0.0)


# -- the owner's steps ---------------------------------------------------------------------------


@asynccontextmanager
async def owner_connection(settings: Settings) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Autocommit (CREATE INDEX CONCURRENTLY refuses a transaction), no statement timeout (an
    index over a million vectors takes minutes), the migrating role's rights."""
    conn = await psycopg.AsyncConnection.connect(
        libpq_conninfo(settings.database_url),
        autocommit=True,
        row_factory=dict_row,
        application_name="record-reindex",
    )
    try:
        await conn.execute("SET statement_timeout = 0")
        await register_vector_async(conn)
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True)
class Progress:
    chunks: int
    done: int

    @property
    def remaining(self) -> int:
        return self.chunks - self.done


async def begin(
    conn: Conn, settings: Settings, *, force: bool = False, models: ModelClients | None = None
) -> Space | None:
    """The building space for the settings' model: the one in progress, or a new one with its
    table and plan. None when the active space already is that model (and not ``force``).
    With ``models``, the model is asked for one vector first: a model that cannot give the
    dimensions wanted would otherwise fail every upload while the re-embed runs."""
    current = await spaces.current(conn)
    active, building = current[0], next((s for s in current if s.state == "building"), None)
    wanted = (settings.embedding_model, settings.embedding_dimensions)
    if building is not None:
        if building.key(settings) != wanted:
            raise ReindexError(
                f"A re-embed into {building.model}:{building.dimensions} (generation "
                f"{building.generation}) is in progress; set EMBEDDING_MODEL and "
                "EMBEDDING_DIMENSIONS back to it to finish it, or run `record reindex --abandon`."
            )
        return building
    if active.model is None:
        raise ReindexError(
            "The active space's model is not recorded. If its vectors are EMBEDDING_MODEL's "
            f"({settings.embedding_model}), run `record reindex --adopt` once, before changing it."
        )
    if active.key(settings) == wanted and not force:
        return None
    if models is not None:
        await probe(models, settings)
    return await _create_space(conn, settings)


async def probe(models: ModelClients, settings: Settings) -> None:
    """One text embedded in the wanted space, or a ReindexError saying why not."""
    model, dims = settings.embedding_model, settings.embedding_dimensions
    try:
        await models.in_space(model, dims).embeddings.embed(["Does this model answer?"])
    except ExternalServiceError as exc:
        raise ReindexError(f"{model} cannot give {dims}-dimensional vectors: {exc}") from exc


async def _create_space(conn: Conn, settings: Settings) -> Space:
    async with conn.transaction():
        row = await fetch_one(conn, "SELECT max(generation) + 1 AS next FROM embedding_spaces")
        generation = int(row["next"]) if row else 2
        table = spaces.table_for(generation)
        dims = int(settings.embedding_dimensions)
        await conn.execute(
            "INSERT INTO embedding_spaces (generation, model, dimensions, relation, state) "
            "VALUES (%s, %s, %s, %s, 'building')",
            (generation, settings.embedding_model, dims, table),
        )
        await conn.execute(_table_sql(table, dims))
        await _plan(conn, generation, settings.reembed_job_chunks)
    log.info("re-embed begun", generation=generation, model=settings.embedding_model, dims=dims)
    return Space(generation, settings.embedding_model, dims, table, "building")


def _table_sql(table: str, dims: int) -> str:
    # The columns search reads are named as in transcript_chunks: its SQL differs only by the
    # relation's name. The foreign key takes a chunk's vectors with it.
    return f"""
    CREATE TABLE {table} (
        id uuid PRIMARY KEY REFERENCES transcript_chunks (id) ON DELETE CASCADE,
        org_id uuid NOT NULL,
        recording_id uuid NOT NULL,
        embedding vector({dims}) NOT NULL
    );
    CREATE INDEX {table}_org_idx ON {table} (org_id, recording_id);
    ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    CREATE POLICY {table}_tenant ON {table}
        USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org());
    GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE};
    """


async def _plan(conn: Conn, generation: int, per_job: int) -> None:
    """Per org, chunk ids in order, cut every ``per_job``: each range one job."""
    await conn.execute(
        """
        INSERT INTO embedding_batches (generation, org_id, first_id, last_id, chunks)
        SELECT %(generation)s, org_id, ids[1], ids[cardinality(ids)], cardinality(ids)
          FROM (SELECT org_id, array_agg(id ORDER BY id) AS ids  -- no min(uuid) in PostgreSQL
                  FROM (SELECT org_id, id,
                               (row_number() OVER (PARTITION BY org_id ORDER BY id) - 1)
                                   / %(per)s AS n
                          FROM transcript_chunks) AS numbered
                 GROUP BY org_id, n) AS ranges
        ON CONFLICT DO NOTHING
        """,
        {"generation": generation, "per": per_job},
    )


async def defer_batches(conn: Conn, space: Space) -> int:
    """A job for every batch not done and not already queued or running; returns how many."""
    rows = await fetch_all(
        conn,
        """
        SELECT b.org_id, b.first_id, b.last_id FROM embedding_batches AS b
         WHERE b.generation = %(g)s AND b.done_at IS NULL
           AND NOT EXISTS (
               SELECT 1 FROM procrastinate_jobs AS j
                WHERE j.task_name = %(task)s AND j.status IN ('todo', 'doing')
                  AND j.lock = 'reembed:' || %(g)s || ':' || b.org_id || ':' || b.first_id)
        """,
        {"g": space.generation, "task": REEMBED_TASK},
    )
    if not rows:
        return 0
    jobs = [
        (
            REEMBED_QUEUE,
            REEMBED_TASK,
            REEMBED_PRIORITY,
            # One job per range at a time: a re-run that defers it again waits its turn.
            f"reembed:{space.generation}:{row['org_id']}:{row['first_id']}",
            json.dumps(
                {
                    "generation": space.generation,
                    "org_id": str(row["org_id"]),
                    "first_id": str(row["first_id"]),
                    "last_id": str(row["last_id"]),
                }
            ),
        )
        for row in rows
    ]
    async with conn.cursor() as cur:
        await cur.executemany(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, %s, %s, NULL, %s::jsonb, NULL)"
            "::procrastinate_job_to_defer_v1])",
            jobs,
        )
    return len(jobs)


async def progress(conn: Conn, space: Space) -> Progress:
    row = await fetch_one(
        conn,
        "SELECT coalesce(sum(chunks), 0) AS chunks, "
        "coalesce(sum(chunks) FILTER (WHERE done_at IS NOT NULL), 0) AS done "
        "FROM embedding_batches WHERE generation = %s",
        (space.generation,),
    )
    return Progress(int(row["chunks"]), int(row["done"])) if row else Progress(0, 0)


async def catch_up(conn: Conn, space: Space, models: ModelClients, settings: Settings) -> int:
    """Embed every chunk the new space still lacks (the owner sees every org's)."""
    embedder = spaces.models_for(models, space, settings).embeddings
    written = 0
    while True:
        rows = await fetch_all(
            conn,
            "SELECT c.id, c.org_id, c.recording_id, c.text FROM transcript_chunks AS c "  # noqa: S608 - checked name
            f"WHERE NOT EXISTS (SELECT 1 FROM {space.relation} AS e WHERE e.id = c.id) "
            "ORDER BY c.id LIMIT %s",
            (settings.embedding_batch_size,),
        )
        if not rows:
            return written
        embedded = await embedder.embed([row["text"] for row in rows])
        async with conn.transaction():  # the staging table lives until the commit
            written += await spaces.write_vectors(conn, space, _vectors(rows, embedded.vectors))


def index_name(space: Space) -> str:
    return f"{space.relation}_embedding_hnsw_idx"


async def build_index(conn: Conn, space: Space) -> None:
    """The new space's HNSW index, CONCURRENTLY; an invalid one (a killed build) is rebuilt."""
    name = index_name(space)
    row = await fetch_one(
        conn,
        "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s",
        (name,),
    )
    if row is not None and row["indisvalid"]:
        return
    if row is not None:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY {name} ON {space.relation} "
        f"USING hnsw (embedding vector_cosine_ops) WITH ({HNSW_WITH})"
    )
    await conn.execute(f"ANALYZE {space.relation}")


async def switch(conn: Conn, space: Space, models: ModelClients, settings: Settings) -> int:
    """Make ``space`` the active one, with every chunk in it; returns the chunks embedded while
    the chunks were locked (those written since the catch-up)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        # Writers wait (a pipeline that read the old spaces commits first or embeds again);
        # readers, searches included, go on.
        await conn.execute("LOCK TABLE transcript_chunks IN SHARE MODE")
        if await _building(conn, space.generation) is None:
            return 0  # already switched by an earlier run
        late = await catch_up(conn, space, models, settings)
        await conn.execute("UPDATE embedding_spaces SET state = 'retired' WHERE state = 'active'")
        await conn.execute(
            "UPDATE embedding_spaces SET state = 'active', switched_at = now() "
            "WHERE generation = %s",
            (space.generation,),
        )
    log.info("embedding space switched", generation=space.generation, late_chunks=late)
    return late


async def drop_retired(conn: Conn, *, attempts: int = 50) -> list[str]:
    """Drop the retired spaces' storage: the legacy column (and its index with it) or their
    tables. Waits for every transaction that read ``embedding_spaces`` (a search ranking in the
    old space holds it) by locking it exclusively; a short lock timeout, retried, so that the
    searches queued behind this lock wait at most that long, and so that a lock-order deadlock
    with a search (this takes the chunks' table too) costs this attempt, never the search."""
    dropped: list[str] = []
    rows = await fetch_all(
        conn,
        "SELECT generation, model, dimensions, relation, state FROM embedding_spaces "
        "WHERE state = 'retired' ORDER BY generation",
    )
    for row in rows:
        space = Space(**row)
        if not await _storage_exists(conn, space):
            continue
        for attempt in range(attempts):
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '500ms'")
                    await conn.execute("LOCK TABLE embedding_spaces IN ACCESS EXCLUSIVE MODE")
                    if space.legacy:
                        await conn.execute(
                            "ALTER TABLE transcript_chunks DROP COLUMN IF EXISTS embedding"
                        )
                    else:
                        await conn.execute(f"DROP TABLE IF EXISTS {space.relation}")
                break
            except (errors.LockNotAvailable, errors.DeadlockDetected):
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
        else:
            raise ReindexError(f"could not lock to drop {space.relation}; run again")
        dropped.append(space.relation if not space.legacy else "transcript_chunks.embedding")
        log.info("retired embedding space dropped", generation=space.generation)
    return dropped


async def _storage_exists(conn: Conn, space: Space) -> bool:
    if space.legacy:
        row = await fetch_one(
            conn,
            "SELECT 1 AS found FROM information_schema.columns "
            "WHERE table_name = 'transcript_chunks' AND column_name = 'embedding'",
        )
    else:
        row = await fetch_one(
            conn, "SELECT to_regclass(%s) IS NOT NULL AS found", (space.relation,)
        )
        return bool(row and row["found"])
    return row is not None


async def adopt(conn: Conn, settings: Settings) -> Space:
    """Record the settings' model as the active space's (whose model was not recorded)."""
    active = await spaces.active(conn)
    if active.model is not None:
        raise ReindexError(f"The active space's model is already recorded: {active.model}.")
    if active.dimensions != settings.embedding_dimensions:
        raise ReindexError(
            f"The active space has {active.dimensions} dimensions, EMBEDDING_DIMENSIONS says "
            f"{settings.embedding_dimensions}: set the model its vectors were made with."
        )
    await conn.execute(
        "UPDATE embedding_spaces SET model = %s WHERE generation = %s AND model IS NULL",
        (settings.embedding_model, active.generation),
    )
    return await spaces.active(conn)


async def abandon(conn: Conn) -> str | None:
    """Stop a re-embed in progress: its jobs find no building space and end; its table goes."""
    current = await spaces.current(conn)
    building = next((s for s in current if s.state == "building"), None)
    if building is None:
        return None
    async with conn.transaction():
        # As the switch does: a pipeline writing into the building space commits first, and
        # the next one reads it gone.
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute("LOCK TABLE transcript_chunks IN SHARE MODE")
        await conn.execute(
            "DELETE FROM embedding_spaces WHERE generation = %s", (building.generation,)
        )
        await conn.execute(f"DROP TABLE IF EXISTS {building.relation}")
    return building.relation


async def finish(conn: Conn, space: Space, models: ModelClients, settings: Settings) -> list[str]:
    """Steps 3 to 5, once every batch is done: catch up, index, switch, drop the old space."""
    if await _building(conn, space.generation) is not None:
        caught = await catch_up(conn, space, models, settings)
        log.info("re-embed caught up", generation=space.generation, chunks=caught)
        await build_index(conn, space)
        await switch(conn, space, models, settings)
    return await drop_retired(conn)
