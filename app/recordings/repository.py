"""SQL for recordings. RLS scopes every statement to the request's org; so does each WHERE."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from psycopg.rows import DictRow

from app.kit.db import Conn, execute, fetch_all, fetch_one

COLUMNS = (
    "id, title, status, error, content_type, size_bytes, duration_seconds, created_by, "
    "created_at, updated_at, media_key, job_id"
)


async def list_page(
    conn: Conn,
    org_id: UUID,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None,
    status: str | None,
) -> list[DictRow]:
    clauses = ["org_id = %(org)s"]
    params: dict[str, object] = {"org": org_id, "limit": limit}
    if status is not None:
        clauses.append("status = %(status)s")
        params["status"] = status
    if after is not None:
        clauses.append("(created_at, id) < (%(after_ts)s, %(after_id)s)")
        params["after_ts"], params["after_id"] = after
    query = (
        f"SELECT {COLUMNS} FROM recordings WHERE {' AND '.join(clauses)} "  # noqa: S608 - fixed fragments
        "ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )
    return await fetch_all(conn, query, params)


async def get(conn: Conn, org_id: UUID, recording_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        f"SELECT {COLUMNS} FROM recordings WHERE org_id = %s AND id = %s",  # noqa: S608
        (org_id, recording_id),
    )


async def existing(conn: Conn, org_id: UUID, recording_ids: Sequence[UUID]) -> set[UUID]:
    rows = await fetch_all(
        conn,
        "SELECT id FROM recordings WHERE org_id = %s AND id = ANY(%s)",
        (org_id, list(recording_ids)),
    )
    return {row["id"] for row in rows}


async def rename(conn: Conn, org_id: UUID, recording_id: UUID, title: str) -> DictRow | None:
    return await fetch_one(
        conn,
        f"UPDATE recordings SET title = %s, updated_at = now() WHERE org_id = %s AND id = %s "  # noqa: S608
        f"RETURNING {COLUMNS}",
        (title, org_id, recording_id),
    )


async def delete(conn: Conn, org_id: UUID, recording_id: UUID) -> tuple[str | None, list[DictRow]]:
    """Delete the recording and everything made from it; returns its media key and the share
    links that ended with it (for the audit log)."""
    # The row first, locked: a share being created for it (which takes a KEY SHARE lock on it)
    # either commits before and is deleted below, or waits and then finds no recording.
    locked = await fetch_one(
        conn,
        "SELECT media_key FROM recordings WHERE org_id = %s AND id = %s FOR UPDATE",
        (org_id, recording_id),
    )
    if locked is None:
        return None, []
    # Transcripts, segments, chunks and documents go by ON DELETE CASCADE; shares point at the
    # recording by id without a foreign key (they may point at other kinds), so go explicitly.
    # A document share may name the recording or the document's own id: both go.
    ended = await fetch_all(
        conn,
        "DELETE FROM shares WHERE org_id = %s AND ("
        "(resource_type IN ('recording', 'document') AND resource_id = %s) "
        "OR (resource_type = 'document' AND resource_id IN "
        "(SELECT id FROM documents WHERE org_id = %s AND recording_id = %s))) "
        "RETURNING id, resource_type, resource_id, revoked_at",
        (org_id, recording_id, org_id, recording_id),
    )
    await execute(
        conn, "DELETE FROM recordings WHERE org_id = %s AND id = %s", (org_id, recording_id)
    )
    return locked["media_key"], [row for row in ended if row["revoked_at"] is None]


async def insert(
    conn: Conn,
    *,
    recording_id: UUID,
    org_id: UUID,
    created_by: UUID | None,
    title: str,
    media_key: str,
    content_type: str,
    size_bytes: int,
) -> DictRow:
    row = await fetch_one(
        conn,
        f"""
        INSERT INTO recordings
            (id, org_id, created_by, title, status, media_key, content_type, size_bytes)
        VALUES (%s, %s, %s, %s, 'uploaded', %s, %s, %s)
        RETURNING {COLUMNS}
        """,  # noqa: S608 - fixed column list
        (recording_id, org_id, created_by, title, media_key, content_type, size_bytes),
    )
    assert row is not None
    return row


async def set_job(conn: Conn, org_id: UUID, recording_id: UUID, job_id: int) -> None:
    await execute(
        conn,
        "UPDATE recordings SET job_id = %s WHERE org_id = %s AND id = %s",
        (job_id, org_id, recording_id),
    )


async def set_status(
    conn: Conn,
    org_id: UUID,
    recording_id: UUID,
    status: str,
    *,
    error: str | None = None,
    duration_seconds: float | None = None,
) -> DictRow | None:
    """Move a recording along the pipeline. Returns None when the recording is gone."""
    return await fetch_one(
        conn,
        """
        UPDATE recordings
           SET status = %s, error = %s,
               duration_seconds = coalesce(%s, duration_seconds), updated_at = now()
         WHERE org_id = %s AND id = %s
        RETURNING id, status, media_key, title
        """,
        (status, error, duration_seconds, org_id, recording_id),
    )
