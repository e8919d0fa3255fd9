"""Transcript as the API shows it."""

from __future__ import annotations

from pydantic import BaseModel


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str


class TranscriptOut(BaseModel):
    language: str | None
    text: str
    segments: list[SegmentOut]
