"""HTTP for documents."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.documents import service
from app.documents.schemas import DocumentOut
from app.kit.deps import DbConn

router = APIRouter(prefix="/api/recordings", tags=["documents"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]


@router.get("/{recording_id}/document")
async def get_document(recording_id: UUID, principal: Reader, conn: DbConn) -> DocumentOut:
    return await service.get_document(conn, principal, recording_id)
