"""Request and response bodies for recordings."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field

from app.auth.schemas import Strict


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


class RecordingPage(BaseModel):
    items: list[RecordingOut]
    next_cursor: str | None


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
