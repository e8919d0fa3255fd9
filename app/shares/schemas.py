"""Request and response bodies for shares and the public pages they open."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field

from app.auth.schemas import Strict
from app.documents.schemas import DocumentOut
from app.kit.pagination import Page
from app.transcripts.schemas import TranscriptOut

MAX_EXPIRES_IN = 365 * 24 * 3600


class ResourceType(StrEnum):
    recording = "recording"
    conversation = "conversation"
    document = "document"  # named by the document's id or its recording's


class ShareIn(Strict):
    resource_type: ResourceType
    resource_id: UUID
    expires_in: int | None = Field(
        default=None,
        ge=60,
        le=MAX_EXPIRES_IN,
        description="Seconds until the link stops working (at most a year); never if absent.",
    )


class ShareOut(BaseModel):
    share_id: str
    url: str
    resource_type: ResourceType
    resource_id: UUID
    created_by: UUID | None
    created_at: datetime
    expires_at: datetime | None


class ShareList(Page[ShareOut]):
    pass


class SharedRecording(BaseModel):
    title: str
    status: str
    duration_seconds: float | None
    created_at: datetime


class SharedCitation(BaseModel):
    """A citation as a link shows it: the moment, not the org's ids."""

    number: int
    recording_title: str
    start: float
    end: float
    text: str


class SharedMessage(BaseModel):
    role: str
    content: str
    citations: list[SharedCitation]
    created_at: datetime


class SharedConversation(BaseModel):
    title: str
    created_at: datetime
    messages: list[SharedMessage]


class SharedPage(BaseModel):
    """What a share link shows: read-only, with nothing that names the org or its people."""

    resource_type: ResourceType
    expires_at: datetime | None
    recording: SharedRecording | None = None
    transcript: TranscriptOut | None = None
    document: DocumentOut | None = None
    media_url: str | None = Field(default=None, description="The recording's media, via the link.")
    conversation: SharedConversation | None = None
