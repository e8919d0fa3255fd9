"""Transcript rules: the API's answer, cached per recording (``app.kit.cache``).

A long meeting's transcript is thousands of segments: reading them and serialising them to JSON
is nearly all the cost of ``GET .../transcript``, and it changes only when the worker saves a
transcript. So the cache keeps the response body itself, sent as it is. The recording's
existence is still checked in the database on every read, so a deleted recording's transcript
is never served from the cache, even if the cache was not told in time.
"""

from __future__ import annotations

from uuid import UUID

from redis.asyncio import Redis

from app.kit.cache import VersionedCache
from app.kit.db import Conn
from app.kit.errors import NotFoundError
from app.recordings.service import existing_recordings
from app.settings import Settings
from app.transcripts import repository
from app.transcripts.schemas import SegmentOut, TranscriptOut

NOT_YET = "No transcript for this recording (yet): check its status."


def transcript_cache(redis: Redis, settings: Settings) -> VersionedCache:
    return VersionedCache(
        redis,
        "transcript",
        ttl_seconds=settings.transcript_cache_ttl_seconds,
        key_prefix=settings.redis_key_prefix,
    )


def transcript_scope(org_id: UUID, recording_id: UUID) -> str:
    return f"{org_id}/{recording_id}"


async def find_transcript(conn: Conn, org_id: UUID, recording_id: UUID) -> TranscriptOut | None:
    """A recording's transcript with its segments, read from the database (no cache)."""
    row = await repository.get_transcript(conn, org_id, recording_id)
    if row is None:
        return None
    segments = await repository.get_segments(conn, org_id, row["id"])
    return TranscriptOut(
        language=row["language"],
        text=row["text"],
        segments=[SegmentOut.model_validate(s) for s in segments],
    )


async def _load(conn: Conn, org_id: UUID, recording_id: UUID) -> TranscriptOut:
    transcript = await find_transcript(conn, org_id, recording_id)
    if transcript is None:
        raise NotFoundError(NOT_YET)
    return transcript


async def transcript_json(
    conn: Conn, redis: Redis, settings: Settings, org_id: UUID, recording_id: UUID
) -> bytes:
    """The response body of ``GET .../transcript``, serialised once per transcript."""
    if not await existing_recordings(conn, org_id, [recording_id]):
        raise NotFoundError(NOT_YET)

    async def load() -> bytes:
        return (await _load(conn, org_id, recording_id)).model_dump_json().encode()

    return await transcript_cache(redis, settings).get_or_load(
        transcript_scope(org_id, recording_id), "v1", load, encode=bytes, decode=bytes
    )
