"""Long recordings are transcribed in pieces, cut where the audio is quietest.

OpenAI's ``audio.transcriptions`` refuses uploads over 25 MB, and the pipeline sends 16 kHz mono
16-bit PCM (32 kB per second): one request could carry only about 13 minutes. A meeting is
longer, so the decoded WAV is cut into pieces of at most ``transcription_piece_seconds`` (10
minutes, 19.2 MB, by default), each transcribed on its own, and their segments are shifted back
onto the recording's clock. A cut falls at the quietest tenth of a second in the last
``SEARCH_SECONDS`` before a piece's limit (a pause between words or sentences), so it rarely
splits a word. A recording within one piece is sent whole, as before.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import numpy as np
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.ai.clients import Segment, Transcript, TranscriptionClient
from app.kit.errors import first_error
from app.kit.metrics import CACHE_REQUESTS

log = structlog.stdlib.get_logger("record.worker.audio")

SAMPLE_RATE = 16_000  # what the pipeline decodes to, and what Whisper models take
SEARCH_SECONDS = 20.0  # how far before a piece's limit a quiet place to cut is looked for
WINDOW = SAMPLE_RATE // 10  # the quiet place: 100 ms of the lowest energy
COPY_FRAMES = SAMPLE_RATE * 30  # frames copied at a time into a piece's file
PCM = (1, 2, SAMPLE_RATE)  # channels, bytes per sample, rate: what decode_to_wav writes


@dataclass(frozen=True, slots=True)
class Piece:
    start: int  # first frame
    end: int  # one past the last frame

    @property
    def offset_seconds(self) -> float:
        return self.start / SAMPLE_RATE


def plan_pieces(wav: Path, piece_seconds: float) -> list[Piece]:
    """Contiguous pieces covering the whole WAV, each at most ``piece_seconds`` long."""
    with wave.open(str(wav), "rb") as reader:
        if (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) != PCM:
            raise ValueError("plan_pieces reads 16 kHz 16-bit mono PCM, as decode_to_wav writes")
        total = reader.getnframes()
        limit = max(int(piece_seconds * SAMPLE_RATE), 2 * WINDOW)
        # No cut closer than this to the end: a sliver of a last piece (OpenAI refuses audio
        # under 0.1 s) would fail the whole recording for nothing.
        tail = min(SAMPLE_RATE, limit // 2)
        pieces: list[Piece] = []
        start = 0
        while total - start > limit:
            cut = _quietest_cut(reader, start, min(start + limit, total - tail))
            pieces.append(Piece(start, cut))
            start = cut
        pieces.append(Piece(start, total))
    return pieces


def _quietest_cut(reader: wave.Wave_read, start: int, hard: int) -> int:
    """The middle of the quietest window in (hard - SEARCH_SECONDS, hard], never at ``start``;
    among equally quiet windows (digital silence), the latest, for fewer pieces."""
    low = max(start + WINDOW, hard - int(SEARCH_SECONDS * SAMPLE_RATE))
    reader.setpos(low)
    samples = np.frombuffer(reader.readframes(hard - low), dtype="<i2").astype(np.float32)
    windows = len(samples) // WINDOW
    if windows == 0:
        return hard
    energy = np.square(samples[: windows * WINDOW]).reshape(windows, WINDOW).mean(axis=1)
    latest_quietest = windows - 1 - int(np.argmin(energy[::-1]))
    return low + latest_quietest * WINDOW + WINDOW // 2


def write_piece(wav: Path, piece: Piece, target: Path) -> Path:
    """Copy the piece's frames into a WAV of its own, a block at a time."""
    with wave.open(str(wav), "rb") as reader, wave.open(str(target), "wb") as writer:
        writer.setparams(reader.getparams())
        reader.setpos(piece.start)
        left = piece.end - piece.start
        while left > 0:
            block = reader.readframes(min(left, COPY_FRAMES))
            if not block:
                break
            writer.writeframes(block)
            left -= len(block) // 2
    return target


class PieceCache(Protocol):
    """Transcripts of pieces already done, so a retried job resumes instead of starting over."""

    async def get(self, piece: Piece) -> Transcript | None: ...

    async def put(self, piece: Piece, transcript: Transcript) -> None: ...


async def transcribe_in_pieces(
    client: TranscriptionClient,
    wav: Path,
    *,
    piece_seconds: float,
    workdir: Path,
    concurrency: int = 1,
    cache: PieceCache | None = None,
) -> Transcript:
    """The whole recording's transcript, one request per piece, on the recording's clock.

    Up to ``concurrency`` pieces are in flight at once (1 for the local model server, whose CPU
    is the limit; more against OpenAI). Each piece's transcript goes to ``cache`` as it
    arrives, so when another piece fails and the job is retried, only the missing ones are
    sent again.
    """
    pieces = await anyio.to_thread.run_sync(plan_pieces, wav, piece_seconds)
    if len(pieces) == 1:
        return await client.transcribe(wav, filename="audio.wav")
    parts: list[Transcript | None] = [None] * len(pieces)
    limiter = anyio.CapacityLimiter(concurrency)

    async def transcribe(number: int, piece: Piece) -> None:
        async with limiter:
            part = await cache.get(piece) if cache is not None else None
            cached = part is not None
            if part is None:
                path = workdir / f"piece-{number + 1}.wav"
                await anyio.to_thread.run_sync(write_piece, wav, piece, path)
                try:
                    part = await client.transcribe(path, filename="audio.wav")
                finally:
                    path.unlink(missing_ok=True)
                if cache is not None:
                    await cache.put(piece, part)
            parts[number] = part
            log.info(
                "transcribed a piece",
                piece=number + 1,
                pieces=len(pieces),
                offset_seconds=round(piece.offset_seconds, 2),
                segments=len(part.segments),
                cached=cached,
            )

    try:
        async with anyio.create_task_group() as group:
            for number, piece in enumerate(pieces):
                group.start_soon(transcribe, number, piece)
    except BaseExceptionGroup as failed:
        # The first piece's error, as a single transcription would raise it: the worker tells
        # permanent from transient failures by its type.
        raise first_error(failed) from None
    return join_pieces(pieces, [part for part in parts if part is not None])


def join_pieces(pieces: list[Piece], parts: list[Transcript]) -> Transcript:
    segments: list[Segment] = []
    for piece, part in zip(pieces, parts, strict=True):
        offset = piece.offset_seconds
        segments += [Segment(s.start + offset, s.end + offset, s.text) for s in part.segments]
    return Transcript(
        language=next((part.language for part in parts if part.language), ""),
        text=" ".join(part.text for part in parts if part.text),
        duration=pieces[-1].end / SAMPLE_RATE,
        segments=segments,
    )


class RedisPieceCache:
    """Piece transcripts in Redis, per recording, media object and model, for a day.

    A cache and nothing more: when Redis fails, the piece is transcribed again.
    """

    def __init__(
        self, redis: Redis, *, scope: str, ttl_seconds: int = 86_400, key_prefix: str = ""
    ) -> None:
        self.redis = redis
        self.prefix = f"{key_prefix}transcript-piece:{{{scope}}}"  # REDIS_KEY_PREFIX first
        self.ttl_seconds = ttl_seconds

    def _key(self, piece: Piece) -> str:
        return f"{self.prefix}:{piece.start}-{piece.end}"

    async def get(self, piece: Piece) -> Transcript | None:
        try:
            raw = await self.redis.get(self._key(piece))
        except RedisError as exc:
            log.warning("transcript piece cache unavailable", error=str(exc))
            return None
        CACHE_REQUESTS.labels("transcript_pieces", "miss" if raw is None else "hit").inc()
        if raw is None:
            return None
        data = json.loads(raw)
        return Transcript(
            language=data["language"],
            text=data["text"],
            duration=data["duration"],
            segments=[Segment(start, end, text) for start, end, text in data["segments"]],
        )

    async def put(self, piece: Piece, transcript: Transcript) -> None:
        data = {
            "language": transcript.language,
            "text": transcript.text,
            "duration": transcript.duration,
            "segments": [[s.start, s.end, s.text] for s in transcript.segments],
        }
        try:
            await self.redis.set(self._key(piece), json.dumps(data), ex=self.ttl_seconds)
        except RedisError as exc:
            log.warning("transcript piece not cached", error=str(exc))
