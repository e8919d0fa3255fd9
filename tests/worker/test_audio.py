"""Cutting long recordings into pieces: where the cuts fall, and that nothing is lost or doubled."""

from __future__ import annotations

import itertools
import os
import wave
from pathlib import Path

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from app.ai.clients import Segment, Transcript
from app.kit.errors import ExternalServiceError
from worker.audio import (
    SAMPLE_RATE,
    WINDOW,
    Piece,
    RedisPieceCache,
    plan_pieces,
    transcribe_in_pieces,
    write_piece,
)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


def speechlike(seconds: float, *, gaps: tuple[float, ...] = (), seed: int = 0) -> np.ndarray:
    """Loud noise everywhere except half-second silences starting at ``gaps`` (seconds)."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(-8000, 8000, int(seconds * SAMPLE_RATE)).astype(np.int16)
    for at in gaps:
        samples[int(at * SAMPLE_RATE) : int((at + 0.5) * SAMPLE_RATE)] = 0
    return samples


def assert_tiles(pieces: list[Piece], total: int, limit: int) -> None:
    assert pieces[0].start == 0
    assert pieces[-1].end == total
    for before, after in itertools.pairwise(pieces):
        assert before.end == after.start  # contiguous: no frame lost, none sent twice
    assert all(0 < p.end - p.start <= limit for p in pieces)


def test_a_recording_within_one_piece_is_not_cut(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", speechlike(12.0))
    assert plan_pieces(wav, 600) == [Piece(0, 12 * SAMPLE_RATE)]


def test_cuts_fall_in_the_pauses(tmp_path: Path) -> None:
    gaps = (22.0, 47.0, 70.0)
    wav = write_wav(tmp_path / "a.wav", speechlike(95.0, gaps=gaps))
    pieces = plan_pieces(wav, 30)
    assert_tiles(pieces, 95 * SAMPLE_RATE, 30 * SAMPLE_RATE)
    assert len(pieces) == 4
    for piece, gap in zip(pieces, gaps, strict=False):
        assert gap * SAMPLE_RATE <= piece.end <= (gap + 0.5) * SAMPLE_RATE, (piece, gap)


def test_without_a_pause_the_cut_comes_at_the_limit(tmp_path: Path) -> None:
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(70 * SAMPLE_RATE) / SAMPLE_RATE)).astype(
        np.int16
    )
    wav = write_wav(tmp_path / "a.wav", tone)
    pieces = plan_pieces(wav, 30)
    assert_tiles(pieces, 70 * SAMPLE_RATE, 30 * SAMPLE_RATE)
    assert len(pieces) == 3


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seconds=st.floats(min_value=0.05, max_value=12.0),
    piece_seconds=st.floats(min_value=0.2, max_value=5.0),
    seed=st.integers(0, 2**16),
)
def test_pieces_always_tile_the_recording(
    tmp_path: Path, seconds: float, piece_seconds: float, seed: int
) -> None:
    samples = speechlike(seconds, seed=seed)
    samples[: len(samples) // 3] //= 50  # a quieter stretch, so cuts move about
    wav = write_wav(tmp_path / f"p{seed}.wav", samples)
    limit = max(int(piece_seconds * SAMPLE_RATE), 2 * WINDOW)
    pieces = plan_pieces(wav, piece_seconds)
    assert_tiles(pieces, len(samples), limit)
    if len(pieces) > 1:  # never a sliver at the end
        assert pieces[-1].end - pieces[-1].start >= min(SAMPLE_RATE, limit // 2)


def test_no_sliver_is_left_at_the_end(tmp_path: Path) -> None:
    # Just past a piece's limit, ending in silence: the latest quiet place would be the very end.
    samples = speechlike(600.0 + 400 / SAMPLE_RATE)
    samples[-5 * SAMPLE_RATE :] = 0
    pieces = plan_pieces(write_wav(tmp_path / "a.wav", samples), 600)
    assert len(pieces) == 2
    assert pieces[-1].end - pieces[-1].start >= SAMPLE_RATE


def test_a_piece_holds_exactly_its_frames(tmp_path: Path) -> None:
    samples = speechlike(5.0, seed=3)
    wav = write_wav(tmp_path / "a.wav", samples)
    piece = Piece(12_345, 54_321)
    with wave.open(str(write_piece(wav, piece, tmp_path / "p.wav")), "rb") as reader:
        assert reader.getframerate() == SAMPLE_RATE
        frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    assert np.array_equal(frames, samples[12_345:54_321])


def test_only_the_pipelines_format_is_read(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(b"\0" * 400)
    with pytest.raises(ValueError, match="16 kHz 16-bit mono"):
        plan_pieces(path, 10)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(44_100)
        out.writeframes(b"\0" * 400)
    with pytest.raises(ValueError, match="16 kHz 16-bit mono"):
        plan_pieces(path, 10)


# --- transcribing the pieces ---------------------------------------------------------------------


class CountingClient:
    """Stands in for the transcription client: answers one segment per piece, after a pause,
    and records how many requests were in flight at once."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_on = fail_on

    async def transcribe(self, path: Path, *, filename: str) -> Transcript:
        self.calls += 1
        number = self.calls
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.02)
            if number == self.fail_on:
                raise ExternalServiceError("openai", "piece refused", retryable=False)
            with wave.open(str(path), "rb") as reader:
                seconds = reader.getnframes() / SAMPLE_RATE
            return Transcript("en", f"part {path.stem}", seconds, [Segment(0.5, 1.0, path.stem)])
        finally:
            self.in_flight -= 1


@pytest.fixture
def five_pieces(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "long.wav", speechlike(50.0, gaps=(9.0, 19.0, 29.0, 39.0)))


@pytest.mark.parametrize("concurrency", [1, 2, 4])
async def test_pieces_run_side_by_side_and_come_back_in_order(
    five_pieces: Path, tmp_path: Path, concurrency: int
) -> None:
    client = CountingClient()
    transcript = await transcribe_in_pieces(
        client, five_pieces, piece_seconds=12, workdir=tmp_path, concurrency=concurrency
    )
    assert client.calls == 5
    assert client.most_in_flight == concurrency
    assert [s.text for s in transcript.segments] == [f"piece-{n}" for n in range(1, 6)]
    cuts = [p.offset_seconds for p in plan_pieces(five_pieces, 12)]
    assert [s.start for s in transcript.segments] == pytest.approx([c + 0.5 for c in cuts])
    assert transcript.text == " ".join(f"part piece-{n}" for n in range(1, 6))
    assert transcript.duration == 50.0


async def test_a_failing_piece_raises_its_own_error_not_a_group(
    five_pieces: Path, tmp_path: Path
) -> None:
    client = CountingClient(fail_on=3)
    with pytest.raises(ExternalServiceError, match="piece refused") as caught:
        await transcribe_in_pieces(
            client, five_pieces, piece_seconds=12, workdir=tmp_path, concurrency=2
        )
    assert not caught.value.retryable
    assert not [p for p in os.listdir(tmp_path) if p.startswith("piece-")]


async def test_a_retry_sends_only_the_pieces_not_yet_cached(
    five_pieces: Path, tmp_path: Path, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url)
    try:
        cache = RedisPieceCache(redis, scope=f"test:{tmp_path.name}")
        failing = CountingClient(fail_on=4)
        with pytest.raises(ExternalServiceError):
            await transcribe_in_pieces(
                failing, five_pieces, piece_seconds=12, workdir=tmp_path, cache=cache
            )
        assert (
            failing.calls == 4
        )  # one at a time: pieces 1-3 done and cached, 4 failed, 5 never sent
        retry = CountingClient()
        transcript = await transcribe_in_pieces(
            retry, five_pieces, piece_seconds=12, workdir=tmp_path, cache=cache
        )
        assert retry.calls == 2  # pieces 4 and 5
        assert [s.text for s in transcript.segments] == [f"piece-{n}" for n in range(1, 6)]
        other = RedisPieceCache(redis, scope="another recording")
        assert await other.get(plan_pieces(five_pieces, 12)[0]) is None
    finally:
        await redis.aclose()


# --- decoding ----------------------------------------------------------------------------------


def adts(layout: str, rate: int, seconds: float, hz: float) -> bytes:
    """An AAC (ADTS) stream of a sine tone: ADTS files may simply be joined end to end."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=rate, layout=layout)
        count = int(rate * seconds)
        tone = (0.3 * np.sin(2 * np.pi * hz * np.arange(count) / rate)).astype(np.float32)
        channels = np.tile(tone, (1 if layout == "mono" else 2, 1))
        for start in range(0, count, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(channels[:, start : start + 1024]),
                format="fltp",
                layout=layout,
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def test_audio_whose_format_changes_midway_decodes_whole(tmp_path: Path) -> None:
    from worker.pipeline import decode_to_wav

    source = tmp_path / "joined.aac"
    source.write_bytes(adts("mono", 44_100, 2.0, 440) + adts("stereo", 48_000, 2.0, 880))
    seconds = decode_to_wav(source, tmp_path / "out.wav")
    assert seconds == pytest.approx(4.0, abs=0.1)
    with wave.open(str(tmp_path / "out.wav"), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (
            1,
            2,
            SAMPLE_RATE,
        )
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    # Both halves are there, each with its own tone: count zero crossings per second.
    for half, hz in (
        (samples[SAMPLE_RATE // 2 : SAMPLE_RATE], 440),
        (samples[-SAMPLE_RATE : -SAMPLE_RATE // 2], 880),
    ):
        crossings = np.count_nonzero(np.diff(np.signbit(half.astype(np.int32))))
        assert crossings == pytest.approx(2 * hz * 0.5, rel=0.05)
