"""Recording rules: who may see, rename and delete what."""

from __future__ import annotations

from uuid import UUID

from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.db import Conn
from app.kit.errors import AuthorizationError, NotFoundError
from app.kit.pagination import decode_cursor, encode_cursor
from app.kit.security.text import plain_text
from app.recordings import repository as repo
from app.recordings.schemas import RecordingOut, RecordingPage, RecordingStatus


async def list_recordings(
    conn: Conn,
    principal: Principal,
    *,
    limit: int,
    cursor: str | None,
    status: RecordingStatus | None,
) -> RecordingPage:
    after = decode_cursor(cursor) if cursor else None
    rows = await repo.list_page(
        conn,
        principal.org,
        limit=limit + 1,
        after=after,
        status=status.value if status else None,
    )
    items = [RecordingOut.model_validate(r) for r in rows[:limit]]
    next_cursor = (
        encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"])
        if len(rows) > limit
        else None
    )
    return RecordingPage(items=items, next_cursor=next_cursor)


async def get_recording(conn: Conn, principal: Principal, recording_id: UUID) -> RecordingOut:
    row = await repo.get(conn, principal.org, recording_id)
    if row is None:
        raise NotFoundError("No such recording.")
    return RecordingOut.model_validate(row)


async def _writable(conn: Conn, principal: Principal, recording_id: UUID) -> None:
    row = await repo.get(conn, principal.org, recording_id)
    if row is None:
        raise NotFoundError("No such recording.")
    if not principal.can(Permission.recordings_write, row["created_by"]):
        raise AuthorizationError("Contributors may change only the recordings they created.")


async def rename_recording(
    conn: Conn, principal: Principal, recording_id: UUID, title: str
) -> RecordingOut:
    await _writable(conn, principal, recording_id)
    row = await repo.rename(conn, principal.org, recording_id, plain_text(title, max_length=300))
    assert row is not None
    return RecordingOut.model_validate(row)


async def delete_recording(conn: Conn, principal: Principal, recording_id: UUID) -> None:
    await _writable(conn, principal, recording_id)
    await repo.delete(conn, principal.org, recording_id)
