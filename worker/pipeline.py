"""The recording pipeline: media → audio → transcript → chunks + embeddings → document.

Every step is idempotent and writes in its own transaction, scoped to the recording's org
(the worker is bound by row-level security like the API): a job killed anywhere and retried
leaves exactly one transcript, one set of chunks and one document. A transcript that was
already saved is reused on retry instead of transcribing again.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import numpy as np
import structlog
from redis.asyncio import Redis

from app.ai.clients import ModelClients, Segment
from app.ai.embedding_cache import CachedEmbeddings
from app.documents import repository as documents
from app.kit.db import Database
from app.kit.errors import ExternalServiceError
from app.kit.storage import ObjectStore
from app.recordings import repository as recordings
from app.search import service as search_cache
from app.search import spaces
from app.settings import Settings
from app.transcripts import repository as transcripts
from app.transcripts.service import transcript_cache, transcript_scope
from worker.audio import SAMPLE_RATE, RedisPieceCache, transcribe_in_pieces
from worker.chunking import ChunkingConfig, chunk_transcript
from worker.workdirs import attempt_directory

log = structlog.stdlib.get_logger(__name__)

NO_SPEECH_SUMMARY = "No speech was detected in this recording."


class PermanentError(Exception):
    """The recording cannot be processed, and retrying will not change that."""


class RecordingGone(Exception):
    """The recording was deleted while its job waited or ran."""


@dataclass
class PipelineDeps:
    settings: Settings
    db: Database
    store: ObjectStore
    models: ModelClients
    redis: Redis


@dataclass(frozen=True)
class PipelineResult:
    segments: int
    chunks: int
    duration_seconds: float
    reused_transcript: bool


# -- decode ------------------------------------------------------------------------------------


def decode_to_wav(source: Path, target: Path) -> float:
    """Decode the first audio stream of any container PyAV reads to 16 kHz mono PCM WAV.

    Returns the audio's duration in seconds. Runs in a worker thread (CPU-bound).
    """
    import av

    try:
        container = av.open(str(source))
    except (av.FFmpegError, OSError) as exc:
        raise PermanentError(f"The media could not be read: {exc}") from exc
    frames = 0
    with container:
        if not container.streams.audio:
            raise PermanentError("The recording has no audio track to transcribe.")
        stream = container.streams.audio[0]
        with wave.open(str(target), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            try:
                for resampled in _resampled(container.decode(stream)):
                    out.writeframes(resampled.to_ndarray().astype(np.int16).tobytes())
                    frames += resampled.samples
            # ValueError: PyAV's answer to frames it cannot take (no FFmpeg error code).
            except (av.FFmpegError, ValueError) as exc:
                raise PermanentError(f"The audio could not be decoded: {exc}") from exc
    if frames == 0:
        raise PermanentError("The recording's audio track is empty.")
    return frames / SAMPLE_RATE


def _resampled(frames: Iterable[Any]) -> Iterator[Any]:
    """16 kHz mono 16-bit frames from decoded ones, whatever their format, layout or rate —
    even when those change mid-stream (files joined end to end, a browser recording whose
    microphone was switched): a resampler takes one input format, so each change gets a new one
    (the old one flushed first)."""
    import av

    resampler: Any = None
    shape: tuple[str, str, int] | None = None
    for frame in frames:
        current = (frame.format.name, frame.layout.name, frame.sample_rate)
        if current != shape:
            if resampler is not None:
                yield from resampler.resample(None)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            shape = current
        yield from resampler.resample(frame)
    if resampler is not None:
        yield from resampler.resample(None)


# -- embeddings, cached --------------------------------------------------------------------------


async def embed_with_cache(
    deps: PipelineDeps,
    texts: Sequence[str],
    *,
    org_id: UUID | None = None,
    space: spaces.Space | None = None,
) -> list[np.ndarray]:
    """Embeddings for ``texts``, from the cache (vector space + org + text hash) where it has
    them; see ``app.ai.embedding_cache``. In ``space`` (default: the settings' model)."""
    models = spaces.models_for(deps.models, space, deps.settings) if space else deps.models
    cache = CachedEmbeddings.from_settings(
        models, deps.redis, deps.settings, scope=str(org_id or "")
    )
    return await cache.embed(texts)


class SpacesChanged(Exception):
    """A re-embed started or switched between embedding the chunks and writing them."""


async def store_chunks(
    deps: PipelineDeps, org_id: UUID, recording_id: UUID, rows: Sequence[transcripts.ChunkRow]
) -> None:
    """Write a recording's chunks with their vectors in every current embedding space: the
    active one, and the one a re-embed is building, so nothing is missing when it switches.

    The chunks' table is locked (ROW EXCLUSIVE, as any insert) before the spaces are read: a
    re-embed's switch locks it SHARE, so either this commits first, in the spaces it read, or
    it reads the spaces as switched and embeds again (at most twice more)."""
    texts = [row.text for row in rows]
    for _ in range(3):
        async with deps.db.transaction(org_id=org_id) as conn:
            embedded_in = await spaces.current(conn)
        vectors = {
            space.generation: await embed_with_cache(deps, texts, org_id=org_id, space=space)
            for space in embedded_in
        }
        try:
            async with deps.db.transaction(org_id=org_id) as conn:
                await conn.execute("LOCK TABLE transcript_chunks IN ROW EXCLUSIVE MODE")
                if await spaces.current(conn) != embedded_in:
                    raise SpacesChanged
                await _write_chunks(
                    conn,
                    org_id=org_id,
                    recording_id=recording_id,
                    rows=rows,
                    embedded_in=embedded_in,
                    vectors=vectors,
                )
            return
        except SpacesChanged:
            log.info("embedding spaces changed while embedding; again", recording_id=recording_id)
    raise SpacesChanged(f"embedding spaces kept changing while storing {recording_id}")


async def _write_chunks(
    conn: Any,
    *,
    org_id: UUID,
    recording_id: UUID,
    rows: Sequence[transcripts.ChunkRow],
    embedded_in: Sequence[spaces.Space],
    vectors: dict[int, list[np.ndarray]],
) -> None:
    legacy = next((s for s in embedded_in if s.legacy), None)
    chunks = [
        replace(row, embedding=vectors[legacy.generation][i] if legacy else None)
        for i, row in enumerate(rows)
    ]
    await transcripts.replace_chunks(
        conn,
        org_id=org_id,
        recording_id=recording_id,
        chunks=chunks,
        with_embedding=legacy is not None,
    )
    for space in embedded_in:
        if not space.legacy:
            await spaces.write_vectors(
                conn,
                space,
                [
                    spaces.ChunkVector(row.id, org_id, recording_id, vector)
                    for row, vector in zip(rows, vectors[space.generation], strict=True)
                ],
            )


# -- the pipeline --------------------------------------------------------------------------------


async def _mark(
    deps: PipelineDeps, org_id: UUID, recording_id: UUID, status: str, **kw: object
) -> str:
    async with deps.db.transaction(org_id=org_id) as conn:
        row = await recordings.set_status(conn, org_id, recording_id, status, **kw)  # type: ignore[arg-type]
    if row is None:
        raise RecordingGone(str(recording_id))
    return str(row["media_key"] or "")


async def _transcribe(
    deps: PipelineDeps, org_id: UUID, recording_id: UUID, media_key: str
) -> tuple[list[Segment], str, str | None, float, bool]:
    """(segments, text, language, duration, reused) — from the database when a previous
    attempt already saved the transcript."""
    async with deps.db.transaction(org_id=org_id) as conn:
        saved = await transcripts.get_transcript(conn, org_id, recording_id)
        rows = await transcripts.get_segments(conn, org_id, saved["id"]) if saved else []
        recording = await recordings.get(conn, org_id, recording_id)
    if saved is not None and recording is not None and recording["duration_seconds"]:
        segments = [Segment(r["start"], r["end"], r["text"]) for r in rows]
        return segments, saved["text"], saved["language"], recording["duration_seconds"], True

    with attempt_directory() as tmp:
        source, audio = Path(tmp) / "media", Path(tmp) / "audio.wav"
        await deps.store.download_to(media_key, source)
        duration = await anyio.to_thread.run_sync(decode_to_wav, source, audio)
        model = deps.models.config.transcription_model
        transcript = await transcribe_in_pieces(
            deps.models.transcription,
            audio,
            piece_seconds=deps.settings.transcription_piece_seconds,
            workdir=Path(tmp),
            concurrency=deps.settings.transcription_concurrency,
            cache=RedisPieceCache(
                deps.redis,
                scope=f"{org_id}:{recording_id}:{media_key}:{model}",
                key_prefix=deps.settings.redis_key_prefix,
            ),
        )
    segments = transcript.segments
    async with deps.db.transaction(org_id=org_id) as conn:
        await transcripts.save_transcript(
            conn,
            org_id=org_id,
            recording_id=recording_id,
            language=transcript.language or None,
            text=transcript.text,
            model=deps.models.config.transcription_model,
            segments=[(s.start, s.end, s.text) for s in segments],
        )
        if (
            await recordings.set_status(
                conn, org_id, recording_id, "transcribing", duration_seconds=duration
            )
            is None
        ):
            raise RecordingGone(str(recording_id))
    return segments, transcript.text, transcript.language, duration, False


async def process_recording(deps: PipelineDeps, org_id: UUID, recording_id: UUID) -> PipelineResult:
    """Transcribe, chunk, embed and summarise one recording; a model server's refusal of what
    was sent (not a failure to answer) is permanent: retrying would send the same again."""
    try:
        return await _process(deps, org_id, recording_id)
    except ExternalServiceError as exc:
        if exc.retryable:
            raise
        raise PermanentError(str(exc)) from exc


async def _process(deps: PipelineDeps, org_id: UUID, recording_id: UUID) -> PipelineResult:
    started = time.perf_counter()
    bound = log.bind(org_id=str(org_id), recording_id=str(recording_id))
    media_key = await _mark(deps, org_id, recording_id, "transcribing")
    if not media_key:
        raise PermanentError("The recording has no stored media.")
    segments, text, _language, duration, reused = await _transcribe(
        deps, org_id, recording_id, media_key
    )
    if not reused:  # committed: a cached answer to GET .../transcript is now old
        await transcript_cache(deps.redis, deps.settings).invalidate(
            transcript_scope(org_id, recording_id)
        )
    bound.info("transcribed", segments=len(segments), seconds=duration, reused=reused)

    await _mark(deps, org_id, recording_id, "embedding")
    config = ChunkingConfig(
        max_tokens=deps.settings.chunk_max_tokens,
        overlap_tokens=deps.settings.chunk_overlap_tokens,
    )
    chunks = chunk_transcript(segments, config)
    rows = [
        transcripts.ChunkRow(
            idx=chunk.index,
            text=chunk.text,
            token_count=chunk.token_count,
            start_seconds=chunk.start_seconds,
            end_seconds=chunk.end_seconds,
            embedding=None,  # store_chunks embeds in each current space
        )
        for chunk in chunks
    ]
    await store_chunks(deps, org_id, recording_id, rows)
    await search_cache.invalidate(deps.redis, org_id, deps.settings)  # committed: searchable
    bound.info("embedded", chunks=len(rows))

    if text.strip():
        draft = await deps.models.chat.generate_document(text)
        title, summary, model = draft.title, draft.summary, draft.model
        key_points, action_items = draft.key_points, draft.action_items
    else:
        title, summary, model, key_points, action_items = "", NO_SPEECH_SUMMARY, "none", [], []
    async with deps.db.transaction(org_id=org_id) as conn:
        recording = await recordings.get(conn, org_id, recording_id)
        if recording is None:
            raise RecordingGone(str(recording_id))
        await documents.save_document(
            conn,
            org_id=org_id,
            recording_id=recording_id,
            title=title or recording["title"],
            summary=summary,
            key_points=key_points,
            action_items=action_items,
            model=model,
        )
        await recordings.set_status(conn, org_id, recording_id, "ready")
    bound.info("ready", seconds=round(time.perf_counter() - started, 2))
    return PipelineResult(len(segments), len(rows), duration, reused)


PROCESSING = frozenset({"uploaded", "transcribing", "embedding"})


async def note_waiting_for_models(
    deps: PipelineDeps, org_id: UUID, recording_id: UUID, *, until: datetime
) -> None:
    """Say on the recording (its ``error``, with the status kept: no column of its own without a
    migration) that it waits for the model server; the next attempt's first step clears it."""
    note = (
        "Waiting for the model server, which cannot be reached right now; processing resumes "
        f"by itself once it answers (until {until:%Y-%m-%d %H:%M} UTC)."
    )
    async with deps.db.transaction(org_id=org_id) as conn:
        recording = await recordings.get(conn, org_id, recording_id)
        if recording is not None and recording["status"] in PROCESSING:
            await recordings.set_status(conn, org_id, recording_id, recording["status"], error=note)


async def mark_failed(deps: PipelineDeps, org_id: UUID, recording_id: UUID, reason: str) -> None:
    async with deps.db.transaction(org_id=org_id) as conn:
        await recordings.set_status(conn, org_id, recording_id, "failed", error=reason[:1000])
