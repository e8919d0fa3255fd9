"""Request and response bodies for recordings."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field

from app.auth.schemas import Strict
from app.kit.pagination import Page


class RecordingStatus(StrEnum):
    uploaded = "uploaded"
    transcribing = "transcribing"
    embedding = "embedding"
    ready = "ready"
    failed = "failed"


class RecordingOut(BaseModel):
    id: UUID
    title: str
    status: RecordingStatus
    error: str | None
    content_type: str | None
    size_bytes: int | None
    duration_seconds: float | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class RecordingPage(Page[RecordingOut]):
    pass


class RecordingPatch(Strict):
    title: str = Field(min_length=1, max_length=300)


class UploadAccepted(BaseModel):
    recording: RecordingOut
    job_id: int


UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "webm, mp4, mov, m4a, mp3, wav or ogg",
                    },
                    "title": {"type": "string", "maxLength": 300},
                },
            }
        }
    },
}


class DirectUploadIn(Strict):
    """A browser's request to upload straight to object storage (S3 backend only)."""

    filename: str = Field(min_length=1, max_length=255)
    title: str | None = Field(default=None, max_length=300)
    size: int = Field(ge=1, description="The file's exact size in bytes.")
    # Accepted for the client's convenience, never trusted: the stored type comes from the
    # extension now and from the file's first bytes at `complete`.
    content_type: str | None = Field(default=None, max_length=255)


class DirectUploadOut(BaseModel):
    """Where to PUT the file: send exactly ``headers`` (they are signed), then POST
    ``/api/recordings/uploads/{upload_id}/complete``."""

    upload_id: UUID
    recording_id: UUID
    url: str
    method: str
    headers: dict[str, str]
    expires_in: int
