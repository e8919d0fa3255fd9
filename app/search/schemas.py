"""Request and response bodies for search."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field

from app.auth.schemas import Strict


class SearchMode(StrEnum):
    hybrid = "hybrid"  # both, fused by reciprocal rank
    vector = "vector"  # by meaning: cosine similarity of embeddings
    keyword = "keyword"  # by words: PostgreSQL full-text search (websearch syntax)


class SearchIn(Strict):
    query: str = Field(min_length=1, max_length=1000)
    limit: int = Field(default=10, ge=1, le=50)
    mode: SearchMode = SearchMode.hybrid
    recording_ids: list[UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Search only these recordings of the org (all of them when absent).",
    )


class SearchHit(BaseModel):
    recording_id: UUID
    recording_title: str
    chunk_id: UUID
    text: str
    start: float = Field(description="Seconds from the start of the recording.")
    end: float
    score: float = Field(
        description="Higher is better. vector: cosine similarity; keyword: ts_rank_cd "
        "normalised to 0..1; hybrid: the reciprocal-rank-fusion sum."
    )


class SearchOut(BaseModel):
    results: list[SearchHit]
    mode: SearchMode = Field(
        description="The mode that answered: hybrid falls back to keyword when the embedding "
        "service is unavailable."
    )
