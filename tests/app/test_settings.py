"""Settings that cannot work together are refused at start-up, with the names to fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_chunk_overlap_must_be_below_the_chunk_size() -> None:
    with pytest.raises(ValidationError, match=r"CHUNK_OVERLAP_TOKENS .* CHUNK_MAX_TOKENS"):
        Settings(chunk_max_tokens=100, chunk_overlap_tokens=100)
    assert Settings(chunk_max_tokens=100, chunk_overlap_tokens=99).chunk_overlap_tokens == 99


def test_the_embedding_cache_keeps_entries_for_a_while() -> None:
    with pytest.raises(ValidationError):
        Settings(embedding_cache_ttl_seconds=0)  # Redis refuses SET ... EX 0
