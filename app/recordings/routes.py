"""HTTP for recordings."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response, status

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import DbConn
from app.kit.pagination import Cursor, Limit
from app.recordings import service
from app.recordings.schemas import RecordingOut, RecordingPage, RecordingPatch, RecordingStatus

router = APIRouter(prefix="/api/recordings", tags=["recordings"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]
Writer = Annotated[Principal, Depends(require(Permission.recordings_write))]


@router.get("")
async def list_recordings(
    principal: Reader,
    conn: DbConn,
    limit: Limit = 20,
    cursor: Cursor = None,
    status_filter: Annotated[RecordingStatus | None, Query(alias="status")] = None,
) -> RecordingPage:
    return await service.list_recordings(
        conn, principal, limit=limit, cursor=cursor, status=status_filter
    )


@router.get("/{recording_id}")
async def get_recording(recording_id: UUID, principal: Reader, conn: DbConn) -> RecordingOut:
    return await service.get_recording(conn, principal, recording_id)


@router.patch("/{recording_id}")
async def update_recording(
    recording_id: UUID, body: RecordingPatch, principal: Writer, conn: DbConn
) -> RecordingOut:
    return await service.rename_recording(conn, principal, recording_id, body.title)


@router.delete("/{recording_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_recording(recording_id: UUID, principal: Writer, conn: DbConn) -> Response:
    await service.delete_recording(conn, principal, recording_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
