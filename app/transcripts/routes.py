"""HTTP for transcripts."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import DbConn
from app.kit.errors import NotFoundError
from app.transcripts import repository
from app.transcripts.schemas import SegmentOut, TranscriptOut

router = APIRouter(prefix="/api/recordings", tags=["transcripts"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]


@router.get("/{recording_id}/transcript")
async def get_transcript(recording_id: UUID, principal: Reader, conn: DbConn) -> TranscriptOut:
    row = await repository.get_transcript(conn, principal.org, recording_id)
    if row is None:
        raise NotFoundError("No transcript for this recording (yet): check its status.")
    segments = await repository.get_segments(conn, principal.org, row["id"])
    return TranscriptOut(
        language=row["language"],
        text=row["text"],
        segments=[SegmentOut.model_validate(s) for s in segments],
    )
