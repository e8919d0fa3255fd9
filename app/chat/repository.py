"""SQL for conversations and their messages. A conversation belongs to one person: every
statement names the org *and* the user (row-level security binds the org)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from app.kit.db import Conn, execute, fetch_all, fetch_one
from app.kit.ids import new_id

CONVERSATION_COLUMNS = "id, title, recording_ids, created_at, updated_at"
# Whose conversation: the member's, and the API key's it was held through (NULL: signed in).
OWNED = "org_id = %s AND user_id = %s AND key_id IS NOT DISTINCT FROM %s"


@dataclass(frozen=True)
class Owner:
    user_id: UUID
    key_id: UUID | None


MESSAGE_COLUMNS = "id, role, content, citations, model, created_at"


async def create_conversation(
    conn: Conn, org_id: UUID, owner: Owner, title: str, recording_ids: Sequence[UUID]
) -> DictRow:
    row = await fetch_one(
        conn,
        "INSERT INTO conversations (id, org_id, user_id, key_id, title, recording_ids) "  # noqa: S608
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {CONVERSATION_COLUMNS}",
        (new_id(), org_id, owner.user_id, owner.key_id, title, list(recording_ids)),
    )
    assert row is not None
    return row


async def get_conversation(
    conn: Conn, org_id: UUID, owner: Owner, conversation_id: UUID, *, lock: bool = False
) -> DictRow | None:
    """``lock``: hold it (FOR KEY SHARE) until commit, so it cannot be deleted meanwhile."""
    return await fetch_one(
        conn,
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations "  # noqa: S608 - fixed columns
        f"WHERE {OWNED} AND id = %s" + (" FOR KEY SHARE" if lock else ""),
        (org_id, owner.user_id, owner.key_id, conversation_id),
    )


async def conversation_header(conn: Conn, org_id: UUID, conversation_id: UUID) -> DictRow | None:
    """Any conversation of the org, whoever owns it: for a share link, which the owner made."""
    return await fetch_one(
        conn,
        "SELECT id, title, created_at FROM conversations WHERE org_id = %s AND id = %s",
        (org_id, conversation_id),
    )


async def list_conversations(
    conn: Conn, org_id: UUID, owner: Owner, *, limit: int, after: tuple[datetime, UUID] | None
) -> list[DictRow]:
    clause = ""
    params: tuple[object, ...] = (org_id, owner.user_id, owner.key_id)
    if after is not None:
        clause = "AND (created_at, id) < (%s, %s) "
        params += after
    return await fetch_all(
        conn,
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations "  # noqa: S608 - fixed fragments
        f"WHERE {OWNED} {clause}"
        "ORDER BY created_at DESC, id DESC LIMIT %s",
        [*params, limit],
    )


async def delete_conversation(
    conn: Conn, org_id: UUID, owner: Owner, conversation_id: UUID
) -> list[DictRow] | None:
    """Delete the conversation, its messages (cascade) and its shares; None if there was no
    such conversation of this user, else the live links that ended (for the audit log)."""
    # Locked first, like a recording: a link being made for it cannot slip in between.
    locked = await fetch_one(
        conn,
        f"SELECT id FROM conversations WHERE {OWNED} AND id = %s FOR UPDATE",  # noqa: S608
        (org_id, owner.user_id, owner.key_id, conversation_id),
    )
    if locked is None:
        return None
    ended = await fetch_all(
        conn,
        "DELETE FROM shares WHERE org_id = %s AND resource_type = 'conversation' "
        "AND resource_id = %s RETURNING id, resource_type, resource_id, revoked_at",
        (org_id, conversation_id),
    )
    await execute(
        conn,
        "DELETE FROM conversations WHERE org_id = %s AND id = %s",
        (org_id, conversation_id),
    )
    return [row for row in ended if row["revoked_at"] is None]


async def add_message(
    conn: Conn,
    org_id: UUID,
    conversation_id: UUID,
    *,
    role: str,
    content: str,
    citations: Sequence[dict[str, Any]] = (),
    model: str | None = None,
) -> UUID:
    # clock_timestamp, not now(): a question and its answer may share a transaction's time.
    row = await fetch_one(
        conn,
        "INSERT INTO messages (id, org_id, conversation_id, role, content, citations, model, "
        "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, clock_timestamp()) RETURNING id",
        (new_id(), org_id, conversation_id, role, content, Jsonb(list(citations)), model),
    )
    assert row is not None
    await execute(
        conn,
        "UPDATE conversations SET updated_at = now() WHERE org_id = %s AND id = %s",
        (org_id, conversation_id),
    )
    return UUID(str(row["id"]))


async def list_messages(
    conn: Conn,
    org_id: UUID,
    conversation_id: UUID,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[DictRow]:
    """Oldest first, as a conversation reads."""
    clause = ""
    params: tuple[object, ...] = (org_id, conversation_id)
    if after is not None:
        clause = "AND (created_at, id) > (%s, %s) "
        params += after
    return await fetch_all(
        conn,
        f"SELECT {MESSAGE_COLUMNS} FROM messages "  # noqa: S608 - fixed fragments
        f"WHERE org_id = %s AND conversation_id = %s {clause}"
        "ORDER BY created_at, id LIMIT %s",
        [*params, limit],
    )


async def recent_messages(
    conn: Conn, org_id: UUID, conversation_id: UUID, count: int
) -> list[DictRow]:
    """The last ``count`` messages, oldest first."""
    rows = await fetch_all(
        conn,
        "SELECT role, content FROM messages WHERE org_id = %s AND conversation_id = %s "
        "ORDER BY created_at DESC, id DESC LIMIT %s",
        (org_id, conversation_id, count),
    )
    return rows[::-1]
