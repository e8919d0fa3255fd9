"""Documents: what the routes, shares and the worker ask of them."""

from __future__ import annotations

from uuid import UUID

from app.auth.principal import Principal
from app.documents import repository
from app.documents.schemas import DocumentOut
from app.kit.db import Conn
from app.kit.errors import NotFoundError

save_document = repository.save_document


async def find_document(conn: Conn, org_id: UUID, recording_id: UUID) -> DocumentOut | None:
    row = await repository.get_document(conn, org_id, recording_id)
    return DocumentOut.model_validate(row) if row is not None else None


async def get_document(conn: Conn, principal: Principal, recording_id: UUID) -> DocumentOut:
    document = await find_document(conn, principal.org, recording_id)
    if document is None:
        raise NotFoundError("No document for this recording (yet): check its status.")
    return document
