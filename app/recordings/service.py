"""Recording rules: who may see, rename and delete what."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import anyio
import structlog
from psycopg.rows import DictRow
from starlette.requests import Request

from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.jobs.queue import defer_pipeline
from app.kit.db import Conn
from app.kit.errors import AuthorizationError, NotFoundError
from app.kit.ids import new_id
from app.kit.pagination import decode_cursor, paginate
from app.kit.security.text import plain_text
from app.kit.services import Services
from app.kit.storage import ObjectStore, create_store, recording_key
from app.recordings import repository as repo
from app.recordings.schemas import RecordingOut, RecordingPage, RecordingStatus, UploadAccepted
from app.recordings.upload import StreamingUpload
from app.shares.audit import audit_ended

log = structlog.stdlib.get_logger(__name__)


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
    return paginate(RecordingPage, rows, limit, RecordingOut.model_validate)


async def recording_row(conn: Conn, org_id: UUID, recording_id: UUID) -> DictRow | None:
    """A recording of ``org_id`` as stored (media key included), for the domains that read
    one on an org's behalf without a caller: shares, the worker."""
    return await repo.get(conn, org_id, recording_id)


async def existing_recordings(conn: Conn, org_id: UUID, recording_ids: Sequence[UUID]) -> set[UUID]:
    """Which of ``recording_ids`` still exist in ``org_id`` (citations of deleted ones drop)."""
    return await repo.existing(conn, org_id, recording_ids) if recording_ids else set()


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


async def delete_recording(conn: Conn, principal: Principal, recording_id: UUID) -> str | None:
    """Delete the rows; returns the media key, to delete once the deletion has committed."""
    await _writable(conn, principal, recording_id)
    media_key, ended = await repo.delete(conn, principal.org, recording_id)
    await audit_ended(conn, principal, ended, "recording deleted")
    return media_key


async def create_recording(
    request: Request, services: Services, principal: Principal
) -> UploadAccepted:
    """Stream the upload to storage, then write the row and its job in one transaction.

    Whatever is refused or fails on the way leaves no object and no row behind.
    """
    store = storage_of(services)
    recording_id = new_id()
    upload = StreamingUpload(
        store,
        lambda media: recording_key(principal.org, recording_id, media.extension),
        max_bytes=services.settings.upload_max_bytes,
    )
    try:
        result = await upload.run(request)
        raw_title = result.fields.get("title") or Path(result.filename).stem or "Untitled"
        title = plain_text(raw_title, max_length=300)
        assert upload.key is not None
        row, job_id = await accept_recording(
            services,
            recording_id=recording_id,
            org_id=principal.org,
            created_by=principal.user_id,
            title=title,
            media_key=upload.key,
            content_type=result.media.content_type,
            size_bytes=result.size,
        )
    except BaseException:
        if upload.key is not None:
            with anyio.CancelScope(shield=True):
                await store.delete(upload.key)
        raise
    log.info(
        "recording accepted",
        recording_id=str(recording_id),
        job_id=job_id,
        size=result.size,
        content_type=result.media.content_type,
    )
    return UploadAccepted(recording=RecordingOut.model_validate(row), job_id=job_id)


async def accept_recording(
    services: Services,
    *,
    recording_id: UUID,
    org_id: UUID,
    created_by: UUID | None,
    title: str,
    media_key: str,
    content_type: str,
    size_bytes: int,
) -> tuple[DictRow, int]:
    """The stored media becomes a recording: its row and its pipeline job, one transaction."""
    async with services.db.transaction(org_id=org_id, user_id=created_by) as conn:
        row = await repo.insert(
            conn,
            recording_id=recording_id,
            org_id=org_id,
            created_by=created_by,
            title=title,
            media_key=media_key,
            content_type=content_type,
            size_bytes=size_bytes,
        )
        job_id = await defer_pipeline(conn, org_id=org_id, recording_id=recording_id)
        await repo.set_job(conn, org_id, recording_id, job_id)
    return row, job_id


def storage_of(services: Services) -> ObjectStore:
    store = services.extras.get("storage")
    if store is None:
        store = services.extras["storage"] = create_store(services.settings)
    return store


async def media_location(
    conn: Conn, principal: Principal, store: ObjectStore, recording_id: UUID
) -> tuple[str, str | None, Path | None, str | None]:
    """(key, content type, local path or None, presigned URL or None) of a recording's media."""
    row = await repo.get(conn, principal.org, recording_id)
    if row is None or not row["media_key"]:
        raise NotFoundError("No such recording.")
    key = row["media_key"]
    path = store.local_path(key)
    if path is not None and not path.is_file():  # deleted a moment ago, with its recording
        raise NotFoundError("No such recording.")
    return key, row["content_type"], path, await store.presigned_get(key)
