"""SQL for documents: one per recording, replaced when regenerated."""

from __future__ import annotations

from uuid import UUID

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from app.kit.db import Conn, fetch_one
from app.kit.ids import new_id


async def save_document(
    conn: Conn,
    *,
    org_id: UUID,
    recording_id: UUID,
    title: str,
    summary: str,
    key_points: list[str],
    action_items: list[str],
    model: str,
) -> UUID:
    row = await fetch_one(
        conn,
        """
        INSERT INTO documents
            (id, org_id, recording_id, title, summary, key_points, action_items, model)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (recording_id) DO UPDATE
           SET title = excluded.title, summary = excluded.summary,
               key_points = excluded.key_points, action_items = excluded.action_items,
               model = excluded.model, updated_at = now()
        RETURNING id
        """,
        (
            new_id(),
            org_id,
            recording_id,
            title,
            summary,
            Jsonb(key_points),
            Jsonb(action_items),
            model,
        ),
    )
    assert row is not None
    return UUID(str(row["id"]))


async def get_document(conn: Conn, org_id: UUID, recording_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT title, summary, key_points, action_items, model, updated_at FROM documents "
        "WHERE org_id = %s AND recording_id = %s",
        (org_id, recording_id),
    )
