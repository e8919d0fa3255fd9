"""HTTP for documents."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.documents import repository
from app.documents.schemas import DocumentOut
from app.kit.deps import DbConn
from app.kit.errors import NotFoundError

router = APIRouter(prefix="/api/recordings", tags=["documents"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]


@router.get("/{recording_id}/document")
async def get_document(recording_id: UUID, principal: Reader, conn: DbConn) -> DocumentOut:
    row = await repository.get_document(conn, principal.org, recording_id)
    if row is None:
        raise NotFoundError("No document for this recording (yet): check its status.")
    return DocumentOut.model_validate(row)
