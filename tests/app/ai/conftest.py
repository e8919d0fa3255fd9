"""The AI tests run the real models (loaded once per session, ``tests/app/conftest.py``) behind
the real model server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import httpx2
import numpy as np
import openai
import pytest

SPEECH = (
    "The quarterly budget meeting starts now. Alice will send the marketing report on Friday. "
    "We need to hire two engineers before the product launch in May."
)
CONTENT_WORDS = (
    "quarterly",
    "budget",
    "meeting",
    "alice",
    "marketing",
    "report",
    "friday",
    "hire",
    "engineers",
    "product",
    "launch",
    "may",
)
SHORT_SPEECH = "Please send the budget report to the finance team."


@pytest.fixture(scope="session")
async def model_http(model_app: object) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=model_app)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://models.test") as client:
        yield client


@pytest.fixture(scope="session")
async def sdk(model_app: object) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real ``openai`` SDK, talking to the model server in-process."""
    transport = httpx2.ASGITransport(app=model_app)  # type: ignore[arg-type]
    http = httpx2.AsyncClient(transport=transport)
    client = openai.AsyncOpenAI(
        base_url="http://models.test/v1", api_key="local", http_client=http, max_retries=0
    )
    yield client
    await client.close()


def speak(text: str, path: Path) -> Path:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: apt-get install espeak-ng (.ci/run does)"
    subprocess.run([espeak, "-s", "150", "-w", str(path), text], check=True)
    return path


def convert(source: Path, target: Path, codec: str, *, video: bool = False) -> Path:
    """Re-encode ``source`` with PyAV (its bundled FFmpeg), optionally beside a video track."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        in_stream = inp.streams.audio[0]
        rate = 48_000 if codec in {"libopus", "opus"} else in_stream.rate
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        if video:
            picture = out.add_stream("mpeg4", rate=5)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
            duration = float(in_stream.duration * in_stream.time_base)
            for i in range(int(duration * 5) + 1):
                frame = av.VideoFrame.from_ndarray(
                    np.full((48, 64, 3), i * 7 % 255, dtype=np.uint8), format="rgb24"
                )
                frame.pts, frame.time_base = i, Fraction(1, 5)
                out.mux(picture.encode(frame.reformat(format="yuv420p")))
            out.mux(picture.encode(None))
        for frame in inp.decode(in_stream):
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return target


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SPEECH, tmp_path_factory.mktemp("speech") / "speech.wav")


@pytest.fixture(scope="session")
def short_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SHORT_SPEECH, tmp_path_factory.mktemp("speech") / "short.wav")


@pytest.fixture(scope="session")
def short_wav_bytes(short_wav: Path) -> bytes:
    return short_wav.read_bytes()
