"""A recording cut into pieces, transcribed by the real model server: the words of both sides
of the cut survive, and every segment lands on the recording's clock."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

from tests.app.ai.conftest import speak
from tests.app.ai.test_clients import make_clients
from worker.audio import SAMPLE_RATE, plan_pieces, transcribe_in_pieces
from worker.pipeline import decode_to_wav

# The longer sentence first: a piece a second longer than it must then hold the other one whole.
FIRST = "We need to hire two engineers before the product launch in May."
SECOND = "Please send the budget report to the finance team."
PAUSE_SECONDS = 2.0


def samples_of(text: str, tmp: Path, name: str) -> np.ndarray:
    wav = decode_to_wav(speak(text, tmp / f"{name}-espeak.wav"), tmp / f"{name}.wav")
    assert wav > 0
    with wave.open(str(tmp / f"{name}.wav"), "rb") as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


def words(text: str) -> set[str]:
    return set(text.lower().replace(".", " ").replace(",", " ").split())


async def test_both_sides_of_a_cut_are_transcribed_on_the_recordings_clock(
    model_app: object, tmp_path: Path
) -> None:
    first, second = samples_of(FIRST, tmp_path, "first"), samples_of(SECOND, tmp_path, "second")
    assert len(second) <= len(first)
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.int16)
    recording = tmp_path / "meeting.wav"
    with wave.open(str(recording), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.concatenate([first, pause, second]).tobytes())
    # A piece a second longer than the first sentence: the cut must fall in the pause.
    piece_seconds = len(first) / SAMPLE_RATE + 1.0
    pieces = plan_pieces(recording, piece_seconds)
    assert len(pieces) == 2
    cut = pieces[1].offset_seconds
    assert len(first) / SAMPLE_RATE < cut < len(first) / SAMPLE_RATE + PAUSE_SECONDS

    clients = make_clients(model_app)
    try:
        transcript = await transcribe_in_pieces(
            clients.transcription, recording, piece_seconds=piece_seconds, workdir=tmp_path
        )
    finally:
        await clients.aclose()

    assert transcript.language == "en"
    assert (
        transcript.duration == len(first) / SAMPLE_RATE + PAUSE_SECONDS + len(second) / SAMPLE_RATE
    )
    heard = words(transcript.text)
    first_words = {"hire", "two", "engineers", "product", "launch", "may"}
    second_words = {"send", "budget", "report", "finance", "team"}
    assert len(heard & first_words) >= 4, transcript.text
    assert len(heard & second_words) >= 3, transcript.text
    before = words(" ".join(s.text for s in transcript.segments if s.start < cut))
    after = words(" ".join(s.text for s in transcript.segments if s.start >= cut))
    assert len(before & first_words) >= 4
    assert not before & second_words
    assert len(after & second_words) >= 3
    assert not after & first_words
    starts = [s.start for s in transcript.segments]
    assert starts == sorted(starts)
    assert transcript.segments[-1].end <= transcript.duration + 0.5
    leftovers = [path.name for path in os.scandir(tmp_path) if path.name.startswith("piece-")]
    assert leftovers == []  # the pieces' files are gone
