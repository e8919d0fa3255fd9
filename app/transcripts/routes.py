"""HTTP for transcripts."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import DbConn, ServicesDep
from app.transcripts import service
from app.transcripts.schemas import TranscriptOut

router = APIRouter(prefix="/api/recordings", tags=["transcripts"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]


@router.get("/{recording_id}/transcript", response_model=TranscriptOut)
async def get_transcript(
    recording_id: UUID, principal: Reader, conn: DbConn, services: ServicesDep
) -> Response:
    body = await service.transcript_json(
        conn, services.redis, services.settings, principal.org, recording_id
    )
    return Response(content=body, media_type="application/json")
