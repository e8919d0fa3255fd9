"""Direct uploads: the browser PUTs the file straight to S3, then says ``complete``.

Large recordings then never pass through an API worker. The price is that the API sees the file
only after it is stored, so ``complete`` checks what arrived as the streaming path checks what
arrives: the declared size, then the first bytes against the name (``check_media``). Anything
refused is deleted. Only then are the recording row and its pipeline job written, in one
transaction, exactly as for ``POST /api/recordings``.

Between the two calls the pending upload lives in Redis (``upload:{upload_id}``), expiring a
while after its URL does. A second key (``upload:{upload_id}:state``) is claimed with SET NX by
``complete``, so two concurrent or repeated completions make one recording, never two.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import structlog

from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.errors import (
    AppError,
    AuthorizationError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from app.kit.ids import new_id
from app.kit.security.files import (
    ACCEPTED,
    MEDIA_TYPES,
    SNIFF_BYTES,
    check_media,
    extension_of,
    safe_filename,
)
from app.kit.security.text import plain_text
from app.kit.services import Services
from app.kit.storage import STAGING_TAGGING, ObjectStore, recording_key, staging_key
from app.recordings.schemas import DirectUploadIn, DirectUploadOut, RecordingOut, UploadAccepted
from app.recordings.service import accept_recording, storage_of
from app.recordings.upload import check_filename

log = structlog.stdlib.get_logger(__name__)

# Long enough to start a large upload on a slow link; S3 checks the signature's expiry when the
# PUT starts, not when it ends.
UPLOAD_URL_SECONDS = 15 * 60
# The pending upload outlives its URL: a PUT that started just before expiry may take a while
# (2 GiB at 10 Mbit/s is ~30 minutes) and must still be completable.
PENDING_MARGIN_SECONDS = 60 * 60
S3_SINGLE_COPY_MAX_BYTES = 5 * 1024**3
NOT_FOUND = (
    "No such upload: it expired or belongs elsewhere; start again with POST "
    "/api/recordings/uploads."
)


@dataclass(frozen=True)
class PendingUpload:
    org_id: UUID
    user_id: UUID | None
    recording_id: UUID
    key: str
    filename: str
    title: str
    size: int
    extension: str

    def dumps(self) -> bytes:
        values: dict[str, Any] = asdict(self)
        for name in ("org_id", "user_id", "recording_id"):
            values[name] = str(values[name]) if values[name] else None
        return json.dumps(values).encode()

    @classmethod
    def loads(cls, raw: bytes | str) -> PendingUpload:
        values = json.loads(raw)
        return cls(
            org_id=UUID(values["org_id"]),
            user_id=UUID(values["user_id"]) if values["user_id"] else None,
            recording_id=UUID(values["recording_id"]),
            key=values["key"],
            filename=values["filename"],
            title=values["title"],
            size=int(values["size"]),
            extension=values["extension"],
        )


def pending_key(upload_id: UUID, prefix: str = "") -> str:
    return f"{prefix}upload:{upload_id}"


def state_key(upload_id: UUID, prefix: str = "") -> str:
    return f"{prefix}upload:{upload_id}:state"


# Why Redis failures are caught as ``Exception``: a connection that breaks while Valkey
# restarts can raise what redis-py does not wrap in RedisError (a RuntimeError from a closed
# transport, an EOFError from a read cut short), and that was a 500 (issue 15). The limiter and
# the caches (kit/cache.py ``guarded``) treat any exception from Redis the same way.


async def _forget(redis: Any, key: str) -> None:
    """Delete ``key`` while cleaning up after a failure: a Redis that does not answer must not
    replace the answer being given (the key expires anyway)."""
    try:
        await redis.delete(key)
    except Exception as exc:  # a Redis failure, whatever its type (above _forget)
        log.warning("upload state not deleted", key=key, error=str(exc))


def _redis_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "Direct uploads are unavailable right now (their state store did not answer); try "
        "again, or upload with multipart POST /api/recordings."
    )


async def start_direct_upload(
    services: Services, principal: Principal, body: DirectUploadIn
) -> DirectUploadOut:
    """Check what the client says it will upload, sign a PUT for it and remember it."""
    store = storage_of(services)
    # The same rules as the streaming upload, applied before any byte moves.
    filename = check_filename(body.filename)
    extension = extension_of(filename)
    if extension is None:
        raise UnsupportedMediaTypeError(
            f"Files named like {safe_filename(filename)!r} are not accepted; "
            f"upload one of: {ACCEPTED}."
        )
    # `complete` moves the object with one server-side CopyObject, which S3 allows up to 5 GiB.
    max_bytes = min(services.settings.upload_max_bytes, S3_SINGLE_COPY_MAX_BYTES)
    if body.size > max_bytes:
        raise PayloadTooLargeError(
            f"The recording is larger than the {max_bytes // 1024**2} MiB limit."
        )
    upload_id, recording_id = new_id(), new_id()
    # The browser writes to a tagged staging key; only `complete` makes it a recording's media.
    key = staging_key(principal.org, recording_id, extension)
    presigned = await store.presigned_put(
        key,
        content_type=MEDIA_TYPES[extension],
        expires_in=UPLOAD_URL_SECONDS,
        content_length=body.size,
        tagging=STAGING_TAGGING,
    )
    if presigned is None:
        raise ConflictError(
            "Direct upload needs the S3 storage backend (STORAGE_BACKEND=s3); this server "
            "stores files itself: upload with multipart POST /api/recordings instead."
        )
    pending = PendingUpload(
        org_id=principal.org,
        user_id=principal.user_id,
        recording_id=recording_id,
        key=key,
        filename=filename,
        title=plain_text(body.title or Path(filename).stem or "Untitled", max_length=300),
        size=body.size,
        extension=extension,
    )
    try:
        await services.redis.set(
            pending_key(upload_id, services.settings.redis_key_prefix),
            pending.dumps(),
            ex=presigned.expires_in + PENDING_MARGIN_SECONDS,
        )
    except (
        Exception
    ) as exc:  # any exception from Redis: a Redis failure, whatever its type (above _forget)
        raise _redis_down() from exc
    log.info(
        "direct upload started",
        upload_id=str(upload_id),
        recording_id=str(recording_id),
        size=body.size,
    )
    return DirectUploadOut(
        upload_id=upload_id,
        recording_id=recording_id,
        url=presigned.url,
        method=presigned.method,
        headers=presigned.headers,
        expires_in=presigned.expires_in,
    )


async def complete_direct_upload(
    services: Services, principal: Principal, upload_id: UUID
) -> UploadAccepted:
    """Check the stored object, then write the row and its job in one transaction."""
    redis = services.redis
    try:
        raw = await redis.get(pending_key(upload_id, services.settings.redis_key_prefix))
        if raw is None:
            raise NotFoundError(NOT_FOUND)
        pending = PendingUpload.loads(raw)
        if pending.org_id != principal.org:
            raise NotFoundError(NOT_FOUND)  # another org's upload does not exist for this caller
        if not principal.can(Permission.recordings_write, pending.user_id):
            # As for editing a recording: a contributor completes only uploads it started.
            raise AuthorizationError(
                "Only the member who started this upload, or an admin, may complete it."
            )
        ttl = max(
            int(await redis.ttl(pending_key(upload_id, services.settings.redis_key_prefix))), 60
        )
        claimed = await redis.set(
            state_key(upload_id, services.settings.redis_key_prefix), b"completing", nx=True, ex=ttl
        )
    except AppError:
        raise
    except (
        Exception
    ) as exc:  # any exception from Redis: a Redis failure, whatever its type (above _forget)
        raise _redis_down() from exc
    if not claimed:
        raise ConflictError(
            f"This upload was already completed (recording {pending.recording_id}); follow it "
            f"with GET /api/recordings/{pending.recording_id}."
        )
    store = storage_of(services)
    media_key = recording_key(pending.org_id, pending.recording_id, pending.extension)
    copied = False
    try:
        if await store.size(pending.key) is None:
            raise ConflictError(
                "The file has not been uploaded yet: PUT it to the upload URL with the given "
                "headers, then complete."
            )
        # Server-side copy to the recording's key, without the staging tag; then the checks, on
        # the copy. The upload URL stays valid for a while, so the staged object could be
        # replaced between a check and a copy; the recording's key only the server writes.
        await store.copy(pending.key, media_key)
        copied = True
        content_type = await _check_object(store, pending, upload_id, services, media_key)
        row, job_id = await accept_recording(
            services,
            recording_id=pending.recording_id,
            org_id=pending.org_id,
            created_by=pending.user_id,
            title=pending.title,
            media_key=media_key,
            content_type=content_type,
            size_bytes=pending.size,
        )
    except BaseException:
        # Not completed: release the claim so the client can retry (after uploading, or after
        # a database hiccup). A refused file has already ended the upload. The staged object
        # stays for a retry; the copy goes (a retry copies again).
        with anyio.CancelScope(shield=True):
            if copied:
                await store.delete(media_key)
            await _forget(redis, state_key(upload_id, services.settings.redis_key_prefix))
        raise
    try:
        await store.delete(pending.key)
    except Exception as exc:  # the lifecycle rule removes it anyway
        log.warning("staged upload not deleted", key=pending.key, error=str(exc))
    # Kept until the pending upload expires, so a repeated `complete` is a 409, not a second
    # recording. The recording is committed by now: a Redis hiccup here must not turn it into
    # a 500 (the "completing" claim still answers a retry with 409 until it expires).
    try:
        await redis.set(
            state_key(upload_id, services.settings.redis_key_prefix),
            json.dumps({"job_id": job_id}).encode(),
            ex=ttl,
            xx=True,
        )
    except (
        Exception
    ):  # any exception from Redis: a Redis failure, whatever its type (above _forget)
        log.warning("could not record a completed upload", upload_id=str(upload_id))
    log.info(
        "recording accepted",
        recording_id=str(pending.recording_id),
        job_id=job_id,
        size=pending.size,
        content_type=content_type,
        via="direct upload",
    )
    return UploadAccepted(recording=RecordingOut.model_validate(row), job_id=job_id)


async def _check_object(
    store: ObjectStore, pending: PendingUpload, upload_id: UUID, services: Services, key: str
) -> str:
    """The type of the uploaded file, checked on its copy at ``key``; refuses what is not
    acceptable, and then deletes the copy and the staged object and spends the upload id."""
    try:
        size = await store.size(key)
        if size != pending.size:
            raise ValidationError(
                f"The uploaded file is {size} bytes but {pending.size} were declared; "
                "start again with POST /api/recordings/uploads."
            )
        media = check_media(await store.head(key, SNIFF_BYTES), pending.filename)
    except AppError:
        # The file is refused for good: nothing of it stays, and the upload id is spent.
        with anyio.CancelScope(shield=True):
            await store.delete(key)
            await store.delete(pending.key)
            await _forget(
                services.redis, pending_key(upload_id, services.settings.redis_key_prefix)
            )
        raise
    return media.content_type
