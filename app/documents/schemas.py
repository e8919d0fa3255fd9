"""Documents as the API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class DocumentOut(BaseModel):
    title: str
    summary: str
    key_points: list[str]
    action_items: list[str]
    model: str
    updated_at: datetime
