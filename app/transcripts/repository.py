"""SQL for transcripts, segments and chunks. Writes are replace-all, so a retried pipeline
step leaves exactly one transcript and one set of chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

import numpy as np
from psycopg.rows import DictRow

from app.kit.db import Conn, execute, fetch_all, fetch_one
from app.kit.ids import new_id


@dataclass(frozen=True)
class ChunkRow:
    idx: int
    text: str
    token_count: int
    start_seconds: float
    end_seconds: float
    # None: the vector goes elsewhere (an embedding space of its own, app/search/spaces.py).
    embedding: Sequence[float] | np.ndarray | None
    id: UUID = field(default_factory=new_id)


async def save_transcript(
    conn: Conn,
    *,
    org_id: UUID,
    recording_id: UUID,
    language: str | None,
    text: str,
    model: str | None,
    segments: Sequence[tuple[float, float, str]],
) -> UUID:
    row = await fetch_one(
        conn,
        """
        INSERT INTO transcripts (id, org_id, recording_id, language, text, model)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (recording_id) DO UPDATE
           SET language = excluded.language, text = excluded.text, model = excluded.model,
               created_at = now()
        RETURNING id
        """,
        (new_id(), org_id, recording_id, language, text, model),
    )
    assert row is not None
    transcript_id: UUID = row["id"]
    await execute(
        conn,
        "DELETE FROM transcript_segments WHERE org_id = %s AND transcript_id = %s",
        (org_id, transcript_id),
    )
    if segments:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO transcript_segments "
                "(transcript_id, idx, org_id, start_seconds, end_seconds, text) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (transcript_id, i, org_id, start, max(end, start), text)
                    for i, (start, end, text) in enumerate(segments)
                ],
            )
    return transcript_id


async def get_transcript(conn: Conn, org_id: UUID, recording_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT id, language, text, model FROM transcripts WHERE org_id = %s AND recording_id = %s",
        (org_id, recording_id),
    )


async def get_segments(conn: Conn, org_id: UUID, transcript_id: UUID) -> list[DictRow]:
    return await fetch_all(
        conn,
        "SELECT start_seconds AS start, end_seconds AS end, text FROM transcript_segments "
        "WHERE org_id = %s AND transcript_id = %s ORDER BY idx",
        (org_id, transcript_id),
    )


CHUNK_COLUMNS = (
    "id, org_id, recording_id, idx, text, token_count, start_seconds, end_seconds, embedding"
)
CHUNK_TYPES = ["uuid", "uuid", "uuid", "int8", "text", "int8", "float8", "float8", "vector"]


async def replace_chunks(
    conn: Conn,
    *,
    org_id: UUID,
    recording_id: UUID,
    chunks: Sequence[ChunkRow],
    with_embedding: bool = True,
) -> int:
    """Replace a recording's chunks: binary COPY into a staging table, then one INSERT.

    PostgreSQL refuses COPY FROM into a table with row-level security, so the rows land in a
    temporary table first (no RLS there, dropped at commit) and move over with one
    INSERT ... SELECT, which the tenant policy checks row by row. ``with_embedding=False``
    leaves ``transcript_chunks.embedding`` out: once a re-embed has switched, the vectors live
    in the active space's own table and that column is gone.
    """
    columns = CHUNK_COLUMNS if with_embedding else CHUNK_COLUMNS.removesuffix(", embedding")
    types = CHUNK_TYPES if with_embedding else CHUNK_TYPES[:-1]
    await execute(
        conn,
        "DELETE FROM transcript_chunks WHERE org_id = %s AND recording_id = %s",
        (org_id, recording_id),
    )
    await execute(
        conn,
        "CREATE TEMPORARY TABLE IF NOT EXISTS chunk_stage (id uuid, org_id uuid, "
        "recording_id uuid, idx bigint, text text, token_count bigint, start_seconds float8, "
        "end_seconds float8, embedding vector) ON COMMIT DROP",
    )
    async with (
        conn.cursor() as cur,
        cur.copy(f"COPY chunk_stage ({columns}) FROM STDIN WITH (FORMAT BINARY)") as copy,
    ):
        copy.set_types(types)
        for chunk in chunks:
            row: tuple[object, ...] = (
                chunk.id,
                org_id,
                recording_id,
                chunk.idx,
                chunk.text,
                chunk.token_count,
                chunk.start_seconds,
                chunk.end_seconds,
            )
            if with_embedding:
                row += (np.asarray(chunk.embedding, dtype=np.float32),)
            await copy.write_row(row)
    return await execute(
        conn,
        f"INSERT INTO transcript_chunks ({columns}) "  # noqa: S608 - fixed column list
        f"SELECT {columns} FROM chunk_stage",
    )


async def count_chunks(conn: Conn, org_id: UUID, recording_id: UUID) -> int:
    row = await fetch_one(
        conn,
        "SELECT count(*) AS n FROM transcript_chunks WHERE org_id = %s AND recording_id = %s",
        (org_id, recording_id),
    )
    return int(row["n"]) if row else 0
