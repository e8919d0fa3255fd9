"""Request and response bodies for chat and conversations."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from app.auth.schemas import Strict
from app.kit.pagination import Page


class ChatIn(Strict):
    message: str = Field(min_length=1, max_length=4000)
    conversation_id: UUID | None = Field(
        default=None, description="Continue this conversation (one of yours); a new one if absent."
    )
    recording_ids: list[UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Answer from these recordings only. A new conversation keeps them; a "
        "follow-up uses the conversation's unless it names others. All of the org's if absent.",
    )


class Citation(BaseModel):
    number: int = Field(description="The [n] in the answer's text.")
    recording_id: UUID
    recording_title: str
    chunk_id: UUID
    start: float = Field(description="Seconds from the start of the recording.")
    end: float
    text: str


class ConversationOut(BaseModel):
    id: UUID
    title: str
    recording_ids: list[UUID]
    created_at: datetime
    updated_at: datetime


class ConversationPage(Page[ConversationOut]):
    pass


class MessageOut(BaseModel):
    id: UUID
    role: Literal["user", "assistant"]
    content: str
    citations: list[Citation]
    model: str | None
    created_at: datetime


class MessagePage(Page[MessageOut]):
    pass
