"""Typed async clients for the three model operations, over the OpenAI protocol.

The same code talks to OpenAI in production and to the local model server (``record models
serve``) in development: only ``OPENAI_BASE_URL`` and the model names change. Every call is
measured (``record_external_calls_total``, ``record_llm_*``) and every failure becomes an
``ExternalServiceError`` whose message says what to do next, so routes and jobs never see an
``openai`` exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Self

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from app.ai.prompts import DOCUMENT_INSTRUCTIONS, format_context
from app.kit.errors import ExternalServiceError
from app.kit.metrics import LLM_DURATION, LLM_TOKENS, track_external
from app.settings import Settings

if TYPE_CHECKING:
    from app.kit.services import Services

SERVICE = "openai"
LOCAL_EMBEDDING_MODEL = "all-minilm-l6-v2"
LOCAL_CHAT_MODEL = "record-extractive-1"
# The database column is vector(384): every embedding model must produce exactly this many.
EMBEDDING_DIMENSIONS = 384

# verbose_json names the language in full; the app stores ISO 639-1 codes.
_LANGUAGE_CODES = {
    "english": "en",
    "german": "de",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "polish": "pl",
    "swedish": "sv",
    "danish": "da",
    "norwegian": "no",
    "finnish": "fi",
    "russian": "ru",
    "ukrainian": "uk",
    "czech": "cs",
    "turkish": "tr",
    "greek": "el",
    "arabic": "ar",
    "hebrew": "he",
    "hindi": "hi",
    "japanese": "ja",
    "korean": "ko",
    "chinese": "zh",
    "vietnamese": "vi",
    "thai": "th",
    "indonesian": "id",
    "romanian": "ro",
    "hungarian": "hu",
    "catalan": "ca",
}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which models to ask for, and how long to wait.

    The defaults name the local model server's models; production overrides them (e.g.
    ``text-embedding-3-small``), and the local server answers to OpenAI's names as well.
    """

    embedding_model: str = LOCAL_EMBEDDING_MODEL
    embedding_dimensions: int = EMBEDDING_DIMENSIONS
    # OpenAI takes up to 2048 inputs per request; 128 chunks of ~300 tokens stay far below its
    # per-request token cap and keep one local request under a few seconds.
    embedding_batch_size: int = 128
    transcription_model: str = "whisper-1"
    chat_model: str = LOCAL_CHAT_MODEL
    timeout_seconds: float = 60.0
    # Apart from the read timeout: a model server that is down or unroutable is known within
    # this, instead of after ``timeout_seconds`` (times the retries).
    connect_timeout_seconds: float = 3.0
    # Chat is interactive: the longest silence (before the first token, or between two) a
    # streamed answer waits for, tried once. A hung model server then ends the stream with an
    # ``error`` event in seconds, not after three full read timeouts.
    chat_read_timeout_seconds: float = 8.0
    # A long meeting takes minutes to transcribe on a CPU.
    transcription_timeout_seconds: float = 1800.0
    max_retries: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Read the model settings that exist on ``settings``; the defaults fill in the rest."""
        defaults = cls()

        def pick(name: str, default: Any) -> Any:
            value = getattr(settings, name, None)
            return default if value is None else type(default)(value)

        return cls(
            embedding_model=pick("embedding_model", defaults.embedding_model),
            embedding_dimensions=pick("embedding_dimensions", defaults.embedding_dimensions),
            embedding_batch_size=pick("embedding_batch_size", defaults.embedding_batch_size),
            transcription_model=pick("transcription_model", defaults.transcription_model),
            chat_model=pick("chat_model", defaults.chat_model),
            timeout_seconds=pick("openai_timeout_seconds", defaults.timeout_seconds),
            connect_timeout_seconds=pick(
                "openai_connect_timeout_seconds", defaults.connect_timeout_seconds
            ),
            chat_read_timeout_seconds=pick(
                "chat_read_timeout_seconds", defaults.chat_read_timeout_seconds
            ),
            transcription_timeout_seconds=pick(
                "transcription_timeout_seconds", defaults.transcription_timeout_seconds
            ),
            max_retries=pick("openai_max_retries", defaults.max_retries),
        )


@dataclass(frozen=True, slots=True)
class Embeddings:
    model: str  # as the server names it: the model that really made the vectors
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    language: str
    text: str
    duration: float
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class DocumentDraft:
    title: str
    summary: str
    key_points: list[str]
    action_items: list[str]
    model: str


def openai_client(
    settings: Settings, config: ModelConfig, *, http_client: httpx2.AsyncClient | None = None
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        timeout=openai.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        max_retries=config.max_retries,
        http_client=http_client,
    )


# Statuses that refuse the request's content (malformed, too large, unsupported, unprocessable):
# sending the same again cannot succeed. Credentials (401/403), a missing model (404) and rate
# limits (429) can be fixed while a job waits to retry, so those stay retryable.
REFUSED_CONTENT = frozenset({400, 413, 415, 422})


class ModelServerUnavailable(ExternalServiceError):
    """The model server could not be reached, did not answer in time, or failed (5xx): an
    outage, not a verdict on the request. The same request succeeds once it is back, so jobs
    wait for it (worker/jobs.py) instead of spending their attempts."""


def external_error(exc: Exception, *, operation: str, base_url: str) -> ExternalServiceError:
    """An ``ExternalServiceError`` that tells the operator what to do about ``exc``."""
    where = f"the model server at {base_url}"
    if isinstance(exc, openai.APITimeoutError):
        detail = (
            f"{where} did not answer the {operation} request in time; retry, or raise "
            "OPENAI_TIMEOUT_SECONDS for long recordings."
        )
        return ModelServerUnavailable(SERVICE, detail)
    if isinstance(exc, openai.APIConnectionError):
        detail = (
            f"Could not reach {where} for {operation}: start it with `record models "
            "serve` (or `record up`), or set OPENAI_BASE_URL to a reachable server."
        )
        return ModelServerUnavailable(SERVICE, detail)
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        detail = (
            f"{where} failed on {operation} (HTTP {exc.status_code}); retry, and check "
            "its logs if it keeps failing."
        )
        return ModelServerUnavailable(SERVICE, detail)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        detail = f"{where} refused the credentials for {operation}: check OPENAI_API_KEY."
    elif isinstance(exc, openai.NotFoundError):
        detail = (
            f"{where} does not serve the model asked for {operation} ({_message(exc)}); "
            "set the model setting to one it lists at /v1/models."
        )
    elif isinstance(exc, openai.RateLimitError):
        detail = f"{where} is rate limiting {operation} requests; retry later or raise the quota."
    elif isinstance(exc, openai.APIStatusError) and exc.status_code in REFUSED_CONTENT:
        detail = f"{where} rejected the {operation} request: {_message(exc)}"
        return ExternalServiceError(SERVICE, detail, retryable=False)
    elif isinstance(exc, openai.APIStatusError):
        detail = f"{where} rejected the {operation} request: {_message(exc)}"
    else:
        detail = f"{where} gave an unusable answer to {operation}: {exc}"
    return ExternalServiceError(SERVICE, detail)


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message


class _Base:
    def __init__(self, client: openai.AsyncOpenAI, config: ModelConfig) -> None:
        self._client = client
        self._config = config

    def _error(self, exc: Exception, operation: str) -> ExternalServiceError:
        return external_error(exc, operation=operation, base_url=str(self._client.base_url))


def _record_llm(model: str, operation: str, started: float, prompt: int, completion: int) -> None:
    LLM_DURATION.labels(model, operation).observe(time.perf_counter() - started)
    if prompt:
        LLM_TOKENS.labels(model, operation, "prompt").inc(prompt)
    if completion:
        LLM_TOKENS.labels(model, operation, "completion").inc(completion)


class EmbeddingClient(_Base):
    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """One vector per text, in order; sent in batches of ``embedding_batch_size``."""
        model = self._config.embedding_model
        size = self._config.embedding_batch_size
        vectors: list[list[float]] = []
        served_by = model
        tokens = 0
        for offset in range(0, len(texts), size):
            batch = list(texts[offset : offset + size])
            served_by, batch_vectors, batch_tokens = await self._embed_batch(batch)
            vectors.extend(batch_vectors)
            tokens += batch_tokens
        return Embeddings(served_by, vectors, tokens)

    async def embed_query(self, text: str) -> list[float]:
        return (await self.embed([text])).vectors[0]

    async def _embed_batch(self, batch: list[str]) -> tuple[str, list[list[float]], int]:
        model = self._config.embedding_model
        dims = self._config.embedding_dimensions
        # Only OpenAI's text-embedding-3 models can shorten their vectors; sending `dimensions`
        # to any other model is an error on OpenAI and on most compatible servers.
        extra: dict[str, Any] = {"dimensions": dims} if model.startswith("text-embedding-3") else {}
        started = time.perf_counter()
        try:
            with track_external(SERVICE, "embeddings"):
                response = await self._client.embeddings.create(model=model, input=batch, **extra)
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: SDK parse failures
            raise self._error(exc, "embeddings") from exc
        _record_llm(model, "embed", started, response.usage.prompt_tokens, 0)
        rows = sorted(response.data, key=lambda item: item.index)
        if len(rows) != len(batch):
            raise ExternalServiceError(
                SERVICE,
                f"The embeddings server returned {len(rows)} vectors for {len(batch)} "
                "inputs; check that it implements the OpenAI embeddings API.",
            )
        vectors = [list(row.embedding) for row in rows]
        if any(len(v) != dims for v in vectors):
            raise ExternalServiceError(
                SERVICE,
                f"Model {model} returned {len(vectors[0])}-dimensional vectors, but "
                f"the search index stores {dims}: choose a model that gives {dims} dimensions.",
            )
        return response.model, vectors, response.usage.prompt_tokens


class TranscriptionClient(_Base):
    async def transcribe(
        self, audio: IO[bytes] | Path, *, filename: str | None = None, language: str | None = None
    ) -> Transcript:
        """Transcribe a recording with segment timestamps.

        Pass an open file (or a path, opened here) rather than bytes: the SDK then streams it
        from disk instead of holding the whole recording in memory.
        """
        if isinstance(audio, Path):
            with audio.open("rb") as handle:
                return await self.transcribe(
                    handle, filename=filename or audio.name, language=language
                )
        model = self._config.transcription_model
        name = filename or Path(getattr(audio, "name", "") or "audio").name
        extra: dict[str, Any] = {"language": language} if language else {}
        started = time.perf_counter()
        try:
            with track_external(SERVICE, "transcriptions"):
                result = await self._client.audio.transcriptions.create(
                    model=model,
                    file=(name, audio),
                    response_format="verbose_json",
                    timestamp_granularities=["segment"],
                    timeout=self._config.transcription_timeout_seconds,
                    **extra,
                )
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: SDK parse failures
            raise self._error(exc, "transcription") from exc
        _record_llm(model, "transcribe", started, 0, 0)
        segments = [
            Segment(float(s.start), float(s.end), s.text.strip())
            for s in (result.segments or [])
            if s.text.strip()
        ]
        language_name = (result.language or "").lower()
        return Transcript(
            language=_LANGUAGE_CODES.get(language_name, language_name),
            text=result.text.strip(),
            duration=float(result.duration),
            segments=segments,
        )


class ChatClient(_Base):
    def _chat_client(self) -> openai.AsyncOpenAI:
        """The client for streamed answers: a short read timeout and no retries, since someone
        is waiting and can ask again (see ``ModelConfig.chat_read_timeout_seconds``)."""
        config = self._config
        return self._client.with_options(
            timeout=openai.Timeout(
                config.timeout_seconds,
                connect=config.connect_timeout_seconds,
                read=config.chat_read_timeout_seconds,
            ),
            max_retries=0,
        )

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """The answer's text as the model produces it, piece by piece."""
        model = self._config.chat_model
        started = time.perf_counter()
        prompt = completion = 0
        try:
            with track_external(SERVICE, "chat"):
                stream = await self._chat_client().chat.completions.create(
                    model=model,
                    messages=_to_params(messages),
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        prompt = chunk.usage.prompt_tokens
                        completion = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: SDK parse failures
            raise self._error(exc, "chat") from exc
        _record_llm(model, "chat", started, prompt, completion)

    def answer(
        self, question: str, passages: Sequence[str], *, history: Sequence[Message] = ()
    ) -> AsyncIterator[str]:
        """Stream an answer citing ``passages`` as [1], [2], ... (see ``app.ai.prompts``)."""
        messages = [
            Message("system", format_context(passages)),
            *history,
            Message("user", question),
        ]
        return self.stream(messages)

    async def complete_json(self, messages: Sequence[Message], *, operation: str) -> dict[str, Any]:
        model = self._config.chat_model
        started = time.perf_counter()
        try:
            with track_external(SERVICE, "chat"):
                response = await self._client.chat.completions.create(
                    model=model,
                    messages=_to_params(messages),
                    response_format={"type": "json_object"},
                )
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: SDK parse failures
            raise self._error(exc, operation) from exc
        usage = response.usage
        _record_llm(
            model,
            operation,
            started,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )
        content = response.choices[0].message.content if response.choices else None
        try:
            value = json.loads(content or "")
        except json.JSONDecodeError as exc:
            raise ExternalServiceError(
                SERVICE,
                f"Model {model} did not answer with JSON for {operation}; choose a "
                "model that supports response_format json_object.",
            ) from exc
        if not isinstance(value, dict):
            raise ExternalServiceError(
                SERVICE, f"Model {model} answered {operation} with JSON that is not an object."
            )
        return value

    async def generate_document(self, transcript: str) -> DocumentDraft:
        """Title, summary, key points and action items for one recording's transcript."""
        value = await self.complete_json(
            [Message("system", DOCUMENT_INSTRUCTIONS), Message("user", transcript)],
            operation="document",
        )
        return DocumentDraft(
            title=str(value.get("title") or "Untitled recording").strip(),
            summary=str(value.get("summary") or "").strip(),
            key_points=_strings(value.get("key_points")),
            action_items=_strings(value.get("action_items")),
            model=self._config.chat_model,
        )


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return []


def _to_params(messages: Sequence[Message]) -> list[ChatCompletionMessageParam]:
    params: list[ChatCompletionMessageParam] = []
    for message in messages:
        if message.role == "system":
            params.append({"role": "system", "content": message.content})
        elif message.role == "user":
            params.append({"role": "user", "content": message.content})
        else:
            params.append({"role": "assistant", "content": message.content})
    return params


class ModelClients:
    """The three clients over one connection pool; close it with ``aclose``."""

    def __init__(self, client: openai.AsyncOpenAI, config: ModelConfig) -> None:
        self.config = config
        self._client = client
        self.embeddings = EmbeddingClient(client, config)
        self.transcription = TranscriptionClient(client, config)
        self.chat = ChatClient(client, config)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        config: ModelConfig | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> Self:
        config = config or ModelConfig.from_settings(settings)
        return cls(openai_client(settings, config, http_client=http_client), config)

    def in_space(self, model: str, dimensions: int) -> ModelClients:
        """The same clients (and connection pool) embedding with another model: during a
        re-embed, search and new uploads embed in the active space while the settings already
        name the next one. Close only the original."""
        config = replace(self.config, embedding_model=model, embedding_dimensions=dimensions)
        return ModelClients(self._client, config)

    async def aclose(self) -> None:
        await self._client.close()


SERVICES_KEY = "models"  # Services.extras key of the API process's ModelClients


def models_of(services: Services) -> ModelClients:
    models: ModelClients = services.extras[SERVICES_KEY]
    return models
