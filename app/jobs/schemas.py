"""Job status as the API shows it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel


class JobOut(BaseModel):
    id: int
    task: str
    status: str  # procrastinate's: todo, doing, succeeded, failed, cancelled, aborted
    attempts: int
    recording_id: UUID
    recording_status: str
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
