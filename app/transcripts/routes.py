"""HTTP for transcripts."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import DbConn, ServicesDep
from app.transcripts import service
from app.transcripts.schemas import TranscriptOut

router = APIRouter(prefix="/api/recordings", tags=["transcripts"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]


@router.get("/{recording_id}/transcript")
async def get_transcript(
    recording_id: UUID, principal: Reader, conn: DbConn, services: ServicesDep
) -> TranscriptOut:
    return await service.get_transcript(
        conn, services.redis, services.settings, principal.org, recording_id
    )
