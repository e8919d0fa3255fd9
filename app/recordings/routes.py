"""HTTP for recordings."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from app.auth.deps import require, require_detached
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import DbConn, ServicesDep
from app.kit.errors import PROBLEM_JSON
from app.kit.pagination import Cursor, Limit
from app.kit.ratelimit import Decision, rate_limit
from app.recordings import direct, service
from app.recordings.schemas import (
    UPLOAD_REQUEST_BODY,
    DirectUploadIn,
    DirectUploadOut,
    RecordingOut,
    RecordingPage,
    RecordingPatch,
    RecordingStatus,
    UploadAccepted,
)
from app.search import service as search_cache
from app.transcripts.service import transcript_cache, transcript_scope

router = APIRouter(prefix="/api/recordings", tags=["recordings"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]
Writer = Annotated[Principal, Depends(require(Permission.recordings_write))]


Creator = Annotated[Principal, Depends(require_detached(Permission.recordings_create))]

# Only the streaming upload writes to the server's own disk (a direct upload goes to S3).
INSUFFICIENT_STORAGE: dict[str, Any] = {
    "description": "The server's storage is full; nothing was kept. Try again later.",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses={507: INSUFFICIENT_STORAGE},
)
async def upload_recording(
    request: Request,
    principal: Creator,
    _limit: Annotated[Decision | None, Depends(rate_limit("upload"))],
    services: ServicesDep,
) -> UploadAccepted:
    """Upload a recording (multipart: ``file``, ``title``). Processing starts at once: follow it
    with ``GET /api/jobs/{job_id}`` or the recording's ``status``."""
    return await service.create_recording(request, services, principal)


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
async def delete_recording(
    recording_id: UUID,
    principal: Writer,
    conn: DbConn,
    services: ServicesDep,
    background: BackgroundTasks,
) -> Response:
    media_key = await service.delete_recording(conn, principal, recording_id)
    # After the response, so after the request's transaction has committed: a rolled-back
    # delete must not lose the media, and a search must not re-cache what is being deleted.
    if media_key:
        background.add_task(service.storage_of(services).delete, media_key)
    background.add_task(search_cache.invalidate, services.redis, principal.org, services.settings)
    background.add_task(
        transcript_cache(services.redis, services.settings).invalidate,
        transcript_scope(principal.org, recording_id),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{recording_id}/media", response_model=None)
async def get_media(
    recording_id: UUID, principal: Reader, conn: DbConn, services: ServicesDep
) -> Response:
    """The recording's media: a redirect to a short-lived signed URL (S3), or the file itself."""
    store = service.storage_of(services)
    _key, content_type, path, url = await service.media_location(
        conn, principal, store, recording_id
    )
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    assert path is not None
    return FileResponse(path, media_type=content_type or "application/octet-stream")


# Direct uploads (S3 only): sign a PUT, the client sends the file to the bucket, then completes.
# Detached authentication like the streaming upload: these routes wait on S3 and Redis, and
# hold no pooled connection meanwhile.
@router.post("/uploads", status_code=status.HTTP_201_CREATED)
async def start_direct_upload(
    body: DirectUploadIn,
    principal: Creator,
    _limit: Annotated[Decision | None, Depends(rate_limit("upload"))],
    services: ServicesDep,
) -> DirectUploadOut:
    """Start an upload straight to object storage: PUT the file to ``url`` with exactly
    ``headers``, then call ``complete``. Needs the S3 backend; otherwise 409 (use multipart
    ``POST /api/recordings``)."""
    return await direct.start_direct_upload(services, principal, body)


@router.post("/uploads/{upload_id}/complete", status_code=status.HTTP_202_ACCEPTED)
async def complete_direct_upload(
    upload_id: UUID, principal: Creator, services: ServicesDep
) -> UploadAccepted:
    """Check the uploaded file (size, type by its first bytes) and start processing it, like
    ``POST /api/recordings`` does. A refused file is deleted (415/400); twice is a 409."""
    return await direct.complete_direct_upload(services, principal, upload_id)
