"""The local model server's cost over calling the models in-process, and its speed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embeddings_model.py [--texts 512] [--rounds 3]

Baseline and contender run in the same process, on the same inputs, in alternating rounds:

- embeddings: ``LocalModels.embed`` called directly (baseline) vs the same texts through
  ``EmbeddingClient`` -> openai SDK -> HTTP framing -> ``/v1/embeddings`` (in-process ASGI, so
  the difference is our protocol layer, not the network). Texts are ~300-token chunks, the
  size ``worker.chunking`` makes.
- transcription: espeak-ng speech (about a minute) transcribed directly vs through
  ``/v1/audio/transcriptions``; also printed as a real-time factor (seconds of work per second
  of audio).

The ratio (server / direct) is the figure to watch: above ~1.1 the protocol layer costs more
than it should. The median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2

from app.ai.clients import ModelClients, ModelConfig
from app.ai.local_models import LocalModels
from app.ai.server import create_model_app
from app.settings import Settings
from worker.chunking import chunk_transcript

SENTENCES = (
    "The quarterly budget meeting starts now.",
    "Alice will send the marketing report on Friday.",
    "We need to hire two engineers before the product launch in May.",
    "The payment provider asked for another round of security testing.",
    "Let's schedule a rehearsal for the launch next Tuesday.",
)


class Seg:
    def __init__(self, start: float, end: float, text: str) -> None:
        self.start, self.end, self.text = start, end, text


def chunk_texts(count: int) -> list[str]:
    segments = [
        Seg(i * 3.0, i * 3.0 + 3.0, SENTENCES[i % len(SENTENCES)]) for i in range(count * 30)
    ]
    return [chunk.text for chunk in chunk_transcript(segments)][:count]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    models = LocalModels()
    started = time.perf_counter()
    models.load_all()
    print(f"models loaded in {time.perf_counter() - started:.1f} s")
    app = create_model_app(models, preload=False)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), timeout=600)
    clients = ModelClients.from_settings(
        Settings(openai_base_url="http://models.bench/v1"),
        config=ModelConfig(max_retries=0),
        http_client=http,
    )
    texts = chunk_texts(args.texts)
    espeak = shutil.which("espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        speech = Path(tmp) / "speech.wav"
        if espeak:
            command = [espeak, "-w", str(speech), " ".join(SENTENCES * 3)]
            await asyncio.to_thread(subprocess.run, command, check=True)

        direct_e, served_e, direct_t, served_t = [], [], [], []
        duration = 0.0
        for _ in range(args.rounds):
            t = time.perf_counter()
            await asyncio.to_thread(models.embed, texts)
            direct_e.append(time.perf_counter() - t)
            t = time.perf_counter()
            await clients.embeddings.embed(texts)
            served_e.append(time.perf_counter() - t)
            if espeak:
                t = time.perf_counter()
                duration = (await asyncio.to_thread(models.transcribe, str(speech))).duration
                direct_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                await clients.transcription.transcribe(speech)
                served_t.append(time.perf_counter() - t)

    await clients.aclose()
    de, se = statistics.median(direct_e), statistics.median(served_e)
    print(f"embeddings, {len(texts)} chunks of ~300 tokens:")
    print(f"  direct {len(texts) / de:8.1f} chunks/s")
    print(f"  server {len(texts) / se:8.1f} chunks/s   ratio server/direct time {se / de:.3f}")
    if espeak:
        dt, st = statistics.median(direct_t), statistics.median(served_t)
        print(f"transcription, {duration:.1f} s of speech:")
        print(f"  direct RTF {dt / duration:.3f}")
        print(f"  server RTF {st / duration:.3f}   ratio server/direct time {st / dt:.3f}")
    else:
        print("transcription skipped: espeak-ng is not installed")


if __name__ == "__main__":
    asyncio.run(main())
