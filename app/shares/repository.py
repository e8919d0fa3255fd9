"""SQL for shares. A share's id is its secret: only its holder, or the org, can name it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from psycopg.rows import DictRow

from app.kit.db import Conn, fetch_all, fetch_one

COLUMNS = "id, resource_type, resource_id, created_by, created_at, expires_at"


async def insert(
    conn: Conn,
    *,
    share_id: str,
    org_id: UUID,
    resource_type: str,
    resource_id: UUID,
    created_by: UUID | None,
    expires_at: datetime | None,
) -> DictRow:
    row = await fetch_one(
        conn,
        "INSERT INTO shares (id, org_id, resource_type, resource_id, created_by, expires_at) "  # noqa: S608
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}",
        (share_id, org_id, resource_type, resource_id, created_by, expires_at),
    )
    assert row is not None
    return row


async def active(
    conn: Conn,
    org_id: UUID,
    *,
    resource_id: UUID | None,
    created_by: UUID | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[DictRow]:
    """Live shares (not revoked, not expired), newest first, optionally of one resource and
    one creator."""
    clauses = ["org_id = %s", "revoked_at IS NULL", "(expires_at IS NULL OR expires_at > now())"]
    params: list[object] = [org_id]
    if resource_id is not None:
        clauses.append("resource_id = %s")
        params.append(resource_id)
    if created_by is not None:
        clauses.append("created_by = %s")
        params.append(created_by)
    if after is not None:
        clauses.append("(created_at, id) < (%s, %s)")
        params += list(after)
    return await fetch_all(
        conn,
        f"SELECT {COLUMNS} FROM shares WHERE {' AND '.join(clauses)} "  # noqa: S608 - fixed
        "ORDER BY created_at DESC, id DESC LIMIT %s",
        [*params, limit],
    )


async def get_live(conn: Conn, org_id: UUID, share_id: str) -> DictRow | None:
    return await fetch_one(
        conn,
        f"SELECT {COLUMNS} FROM shares WHERE org_id = %s AND id = %s "  # noqa: S608 - fixed
        "AND revoked_at IS NULL",
        (org_id, share_id),
    )


async def revoke(conn: Conn, org_id: UUID, share_id: str) -> DictRow | None:
    """Revoke a live share; None when it was not live (revoked meanwhile, or never was)."""
    return await fetch_one(
        conn,
        "UPDATE shares SET revoked_at = now() "
        "WHERE org_id = %s AND id = %s AND revoked_at IS NULL "
        "RETURNING id, resource_type, resource_id",
        (org_id, share_id),
    )


async def end_by_creator(conn: Conn, org_id: UUID, user_id: UUID) -> list[DictRow]:
    """Revoke every live share ``user_id`` made in the org (they left, or may no longer share)."""
    return await fetch_all(
        conn,
        "UPDATE shares SET revoked_at = now() "
        "WHERE org_id = %s AND created_by = %s AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now()) "
        "RETURNING id, resource_type, resource_id",
        (org_id, user_id),
    )


async def recording_owner(conn: Conn, org_id: UUID, recording_id: UUID) -> DictRow | None:
    """The recording's creator, the row held (FOR KEY SHARE) until commit: a delete waits."""
    return await fetch_one(
        conn,
        "SELECT created_by FROM recordings WHERE org_id = %s AND id = %s FOR KEY SHARE",
        (org_id, recording_id),
    )


async def resolve(conn: Conn, share_id: str) -> DictRow | None:
    """A live share by id, before the tenant is known (SECURITY DEFINER look-up)."""
    return await fetch_one(
        conn,
        "SELECT org_id, resource_type, resource_id, expires_at FROM app_resolve_share(%s)",
        (share_id,),
    )


async def document_of(
    conn: Conn, org_id: UUID, resource_id: UUID, *, lock: bool = False
) -> DictRow | None:
    """A document named by its own id or by its recording's, with the recording's creator."""
    return await fetch_one(
        conn,
        "SELECT d.id, d.recording_id, r.created_by FROM documents d "  # noqa: S608 - fixed
        "JOIN recordings r ON r.org_id = d.org_id AND r.id = d.recording_id "
        "WHERE d.org_id = %s AND (d.id = %s OR d.recording_id = %s)"
        + (" FOR KEY SHARE OF r" if lock else ""),
        (org_id, resource_id, resource_id),
    )
