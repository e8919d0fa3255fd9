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

import wave
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import structlog

from app.ai.clients import Segment, Transcript, TranscriptionClient

log = structlog.stdlib.get_logger("record.worker.audio")

SAMPLE_RATE = 16_000  # what the pipeline decodes to, and what Whisper models take
SEARCH_SECONDS = 20.0  # how far before a piece's limit a quiet place to cut is looked for
WINDOW = SAMPLE_RATE // 10  # the quiet place: 100 ms of the lowest energy
COPY_FRAMES = SAMPLE_RATE * 30  # frames copied at a time into a piece's file


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
        if (reader.getnchannels(), reader.getsampwidth()) != (1, 2):
            raise ValueError("plan_pieces reads 16-bit mono PCM, as decode_to_wav writes it")
        total = reader.getnframes()
        limit = max(int(piece_seconds * reader.getframerate()), 2 * WINDOW)
        pieces: list[Piece] = []
        start = 0
        while total - start > limit:
            cut = _quietest_cut(reader, start, start + limit)
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


async def transcribe_in_pieces(
    client: TranscriptionClient, wav: Path, *, piece_seconds: float, workdir: Path
) -> Transcript:
    """The whole recording's transcript, one request per piece, on the recording's clock."""
    pieces = await anyio.to_thread.run_sync(plan_pieces, wav, piece_seconds)
    if len(pieces) == 1:
        return await client.transcribe(wav, filename="audio.wav")
    segments: list[Segment] = []
    texts: list[str] = []
    language = ""
    for number, piece in enumerate(pieces, start=1):
        path = await anyio.to_thread.run_sync(
            write_piece, wav, piece, workdir / f"piece-{number}.wav"
        )
        try:
            part = await client.transcribe(path, filename="audio.wav")
        finally:
            path.unlink(missing_ok=True)
        offset = piece.offset_seconds
        segments += [Segment(s.start + offset, s.end + offset, s.text) for s in part.segments]
        if part.text:
            texts.append(part.text)
        language = language or part.language
        log.info(
            "transcribed a piece",
            piece=number,
            pieces=len(pieces),
            offset_seconds=round(offset, 2),
            segments=len(part.segments),
        )
    return Transcript(
        language=language,
        text=" ".join(texts),
        duration=pieces[-1].end / SAMPLE_RATE,
        segments=segments,
    )
