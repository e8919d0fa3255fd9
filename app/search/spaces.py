"""Embedding spaces: which model and dimensions a chunk's vector is in, and where it is stored.

A space is one generation of ``embedding_spaces`` (migration 0009). Search reads the *active*
one: it embeds the query with that space's model and ranks over that space's relation. New
chunks are written into the active space and, while a re-embed runs, into the *building* one
too, so that nothing is missing when the re-embed switches (``worker/reindex.py``). The
settings' ``EMBEDDING_MODEL`` and ``EMBEDDING_DIMENSIONS`` name the space a re-embed goes to;
they are not what search uses until that re-embed has switched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import numpy as np

from app.ai.clients import ModelClients
from app.kit.db import Conn, execute, fetch_all
from app.settings import Settings

State = Literal["building", "active", "retired"]
LEGACY_RELATION = "transcript_chunks"  # generation 1: the column the chunks always had
_RELATION = re.compile(r"^(transcript_chunks|chunk_embeddings_[0-9]+)$")


@dataclass(frozen=True)
class Space:
    generation: int
    model: str | None  # None: not recorded (generation 1 before ``record reindex --adopt``)
    dimensions: int
    relation: str
    state: State

    def __post_init__(self) -> None:
        # The relation's name goes into SQL: the table's CHECK allows these two forms only,
        # and so does this.
        if not _RELATION.match(self.relation):
            raise ValueError(f"not an embedding relation: {self.relation!r}")

    @property
    def legacy(self) -> bool:
        """Stored in ``transcript_chunks.embedding``, not a table of its own."""
        return self.relation == LEGACY_RELATION

    def model_name(self, settings: Settings) -> str:
        return self.model or settings.embedding_model

    def key(self, settings: Settings) -> tuple[str, int]:
        return (self.model_name(settings), self.dimensions)


def table_for(generation: int) -> str:
    return f"chunk_embeddings_{int(generation)}"


_COLUMNS = "generation, model, dimensions, relation, state"


async def current(conn: Conn) -> list[Space]:
    """The active space, then the building one if a re-embed runs."""
    rows = await fetch_all(
        conn,
        f"SELECT {_COLUMNS} FROM embedding_spaces "  # noqa: S608 - fixed SQL
        "WHERE state IN ('active', 'building') ORDER BY state = 'building', generation",
    )
    return [Space(**row) for row in rows]


async def active(conn: Conn) -> Space:
    spaces = await current(conn)
    if not spaces or spaces[0].state != "active":
        raise LookupError("no active embedding space: run the migrations")
    return spaces[0]


def models_for(models: ModelClients, space: Space, settings: Settings) -> ModelClients:
    """Clients that embed in ``space`` (sharing ``models``' connections)."""
    model, dimensions = space.key(settings)
    config = models.config
    if (config.embedding_model, config.embedding_dimensions) == (model, dimensions):
        return models
    return models.in_space(model, dimensions)


@dataclass(frozen=True)
class ChunkVector:
    chunk_id: UUID
    org_id: UUID
    recording_id: UUID
    vector: np.ndarray


async def write_vectors(conn: Conn, space: Space, rows: Sequence[ChunkVector]) -> int:
    """Store ``rows``' vectors in ``space``: idempotent (a retried batch writes the same).

    Binary COPY into a temporary table (COPY cannot write a table under row-level security),
    then one statement that the tenant policy checks row by row."""
    if not rows:
        return 0
    await execute(
        conn,
        "CREATE TEMPORARY TABLE IF NOT EXISTS vector_stage (id uuid, org_id uuid, "
        "recording_id uuid, embedding vector) ON COMMIT DROP",
    )
    await execute(conn, "TRUNCATE vector_stage")
    async with (
        conn.cursor() as cur,
        cur.copy(
            "COPY vector_stage (id, org_id, recording_id, embedding) FROM STDIN "
            "WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["uuid", "uuid", "uuid", "vector"])
        for row in rows:
            await copy.write_row(
                (row.chunk_id, row.org_id, row.recording_id, np.asarray(row.vector, np.float32))
            )
    if space.legacy:
        return await execute(
            conn,
            "UPDATE transcript_chunks AS c SET embedding = s.embedding FROM vector_stage AS s "
            "WHERE c.org_id = s.org_id AND c.id = s.id",
        )
    # Only chunks that still exist: one deleted since it was read is not brought back (the
    # foreign key would refuse it anyway).
    return await execute(
        conn,
        f"INSERT INTO {space.relation} (id, org_id, recording_id, embedding) "  # noqa: S608 - checked name
        "SELECT s.id, s.org_id, s.recording_id, s.embedding FROM vector_stage AS s "
        "JOIN transcript_chunks AS c ON c.org_id = s.org_id AND c.id = s.id "
        "ON CONFLICT (id) DO UPDATE SET embedding = excluded.embedding",
    )


def record_model_if_unset(database_url: str, settings: Settings) -> str | None:
    """At ``record db upgrade`` (the migration Job): the active space whose model was never
    recorded takes the settings' model, which is the one its vectors were made with as long as
    nobody changed it in the same deploy. Without this, changing ``EMBEDDING_MODEL`` before
    ``record reindex --adopt`` would have search embed queries with a model the stored vectors
    are not in. Returns the model recorded, or None (already recorded, or other dimensions:
    then ``record reindex --adopt`` says what to do)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "UPDATE embedding_spaces SET model = %s "
            "WHERE state = 'active' AND model IS NULL AND dimensions = %s RETURNING model",
            (settings.embedding_model, settings.embedding_dimensions),
        ).fetchone()
    return str(row[0]) if row else None
