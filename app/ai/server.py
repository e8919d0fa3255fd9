"""The local OpenAI-compatible model server: embeddings, transcription, extractive chat.

``record models serve`` runs it under uvicorn; ``record up`` points ``OPENAI_BASE_URL`` at it.
Routes are ``async def`` and push all model work to a worker thread, so one slow transcription
never stalls the health checks or a quick embedding request. Errors use OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) so the ``openai`` SDK raises its usual
exception classes. With ``MODEL_SERVER_API_KEY`` set (``record up`` and the Pulumi stack set it)
every ``/v1`` request must carry it as its bearer token, as OpenAI's API keys are carried; the
health checks stay open for probes. That is on top of listening on loopback locally and of the
network policy that admits only the API and the worker in a cluster; ``record models serve``
refuses to listen beyond loopback without the key.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ai import extractive
from app.ai.extractive import ExtractiveAnswerer, passages_from_messages
from app.ai.local_models import (
    EMBEDDING_DIMENSIONS,
    EMBEDDING_MODEL,
    TRANSCRIPTION_MODEL,
    AudioDecodeError,
    LocalModels,
    Transcription,
)
from app.ai.schemas import ChatCompletionRequest, EmbeddingsRequest
from app.ai.text import count_tokens, token_spans

CHAT_MODEL = extractive.MODEL_ID
# Production configuration names OpenAI's models; the local server answers to those names too,
# so switching OPENAI_BASE_URL is the only change between a laptop and the cloud.
EMBEDDING_ALIASES = frozenset(
    {
        EMBEDDING_MODEL,
        "all-minilm-l6-v2",
        "sentence-transformers/all-minilm-l6-v2",
        "text-embedding-3-small",
    }
)
TRANSCRIPTION_ALIASES = frozenset({TRANSCRIPTION_MODEL, "tiny.en", "whisper-1"})
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's per-request limit; clients batch below it
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3
RESPONSE_FORMATS = frozenset({"json", "text", "verbose_json", "srt", "vtt"})
_STREAM_PIECE = re.compile(r"\S+\s*|\s+")


class OpenAIProtocolError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def response(self) -> JSONResponse:
        return error_response(
            self.status_code, self.message, type=self.type, code=self.code, param=self.param
        )


def error_response(
    status_code: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status_code)


def _unknown_model(model: str, expected: str) -> OpenAIProtocolError:
    return OpenAIProtocolError(
        404,
        f"The model `{model}` does not exist on this server; use `{expected}`.",
        code="model_not_found",
        param="model",
    )


class _BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes the limit; answered 413 by UploadLimit."""


class UploadLimit:
    """Refuse bodies over ``max_bytes``: by their Content-Length before reading them, and by
    counting what arrives when there is none (``Transfer-Encoding: chunked``), so a body that
    streams past the limit is cut off there rather than spooled whole to a temporary file."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> JSONResponse:
        return error_response(
            413,
            f"The request body is over {self.max_bytes} bytes; split the "
            "recording or raise the server's upload limit.",
            code="file_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refusal()(scope, receive, send)
                return
        seen = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            # The app's own answer to a body cut short (FastAPI's "error parsing the body")
            # gives way to the 413.
            if over and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if started or not over:
                raise
        if over and not started:
            await self._refusal()(scope, receive, send)


class RequireKey:
    """``/v1`` requests need ``Authorization: Bearer <key>``; a wrong or missing key is a 401 in
    OpenAI's shape, so clients say "check OPENAI_API_KEY"."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(
                    401,
                    "Incorrect API key provided: send the model server's key "
                    "(MODEL_SERVER_API_KEY) as the bearer token.",
                    code="invalid_api_key",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class ServerState:
    models: LocalModels
    answerer: ExtractiveAnswerer


def _server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.models
    return state


State = Annotated[ServerState, Depends(_server_state)]
router = APIRouter()


def create_model_app(
    models: LocalModels | None = None,
    *,
    preload: bool = True,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    api_key: str | None = None,
) -> FastAPI:
    """The ASGI app. ``preload`` loads both models at start-up so /readyz means ready.

    ``api_key`` defaults to ``MODEL_SERVER_API_KEY`` from the environment (uvicorn calls this
    factory without arguments); empty or unset, any bearer token is taken.
    """
    local = models or LocalModels()
    key = api_key if api_key is not None else os.environ.get("MODEL_SERVER_API_KEY", "")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if preload:
            await anyio.to_thread.run_sync(local.load_all)
        yield

    app = FastAPI(
        title="Record local models", version="1", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.models = ServerState(local, ExtractiveAnswerer(local.embed))
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    if key:
        app.add_middleware(RequireKey, key=key)  # outermost: no body is read before the key
    _install_error_handlers(app)
    app.include_router(router)
    return app


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    return {"status": "ok", "models": state.models.loaded}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    loaded = state.models.loaded
    ready = all(loaded.values())
    return JSONResponse({"ready": ready, "models": loaded}, status_code=200 if ready else 503)


@router.get("/v1/models")
async def list_models() -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(m) for m in _MODEL_IDS]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str) -> dict[str, Any]:
    if model_id not in _MODEL_IDS:
        raise _unknown_model(model_id, ", ".join(_MODEL_IDS))
    return _model_card(model_id)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingsRequest, state: State) -> dict[str, Any]:
    if body.model.lower() not in EMBEDDING_ALIASES:
        raise _unknown_model(body.model, EMBEDDING_MODEL)
    if body.dimensions is not None and body.dimensions != EMBEDDING_DIMENSIONS:
        raise OpenAIProtocolError(
            400,
            f"This model produces {EMBEDDING_DIMENSIONS}-dimensional embeddings; "
            f"`dimensions` must be {EMBEDDING_DIMENSIONS} or omitted.",
            code="invalid_value",
            param="dimensions",
        )
    texts = _embedding_inputs(body.input)
    models = state.models

    def work() -> tuple[Any, int]:
        return models.embed(texts), models.count_embedding_tokens(texts)

    vectors, tokens = await anyio.to_thread.run_sync(work)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode_vector(vector, body.encoding_format),
        }
        for i, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": EMBEDDING_MODEL,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    state: State,
    *,
    file: Annotated[UploadFile | None, File()] = None,
    model: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    language: Annotated[str | None, Form()] = None,
    timestamp_granularities: Annotated[
        list[str] | None, Form(alias="timestamp_granularities[]")
    ] = None,
) -> Response | dict[str, Any]:
    # `prompt` and `temperature` are accepted and ignored, as extra form fields always are:
    # greedy decoding of an English-only model has no use for them.
    if file is None:
        raise OpenAIProtocolError(400, "Missing required parameter: 'file'.", param="file")
    try:
        words = _check_transcription_options(
            model, response_format, language, timestamp_granularities or []
        )
        # The multipart parser has already spooled the upload to a temporary file (in memory
        # only up to 1 MB); PyAV reads it from there in small blocks.
        audio: BinaryIO = file.file
        models = state.models
        result = await anyio.to_thread.run_sync(
            lambda: models.transcribe(audio, word_timestamps=words)
        )
    except AudioDecodeError as exc:
        raise OpenAIProtocolError(
            400,
            f"Invalid file format: {exc}. Send audio or video FFmpeg can decode "
            "(webm, mp4, mov, m4a, mp3, wav, ogg, flac).",
            param="file",
            code="invalid_file_format",
        ) from exc
    finally:
        await file.close()
    return _transcription_response(result, response_format, words=words)


def _check_transcription_options(
    model: str | None, response_format: str, language: str | None, granularities: list[str]
) -> bool:
    """Validate the form fields; True when word timestamps are asked for."""
    if not model:
        raise OpenAIProtocolError(400, "Missing required parameter: 'model'.", param="model")
    if model.lower() not in TRANSCRIPTION_ALIASES:
        raise _unknown_model(model, TRANSCRIPTION_MODEL)
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIProtocolError(
            400,
            f"response_format must be one of {', '.join(sorted(RESPONSE_FORMATS))}.",
            param="response_format",
            code="invalid_value",
        )
    if language and language.lower() not in {"en", "english"}:
        raise OpenAIProtocolError(
            400,
            f"This server's model ({TRANSCRIPTION_MODEL}) transcribes English only; "
            "omit `language` or send 'en'.",
            param="language",
            code="unsupported_language",
        )
    if set(granularities) - {"segment", "word"}:
        raise OpenAIProtocolError(
            400,
            "timestamp_granularities[] accepts 'segment' and 'word'.",
            param="timestamp_granularities",
        )
    return "word" in granularities


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, state: State) -> Response | dict[str, Any]:
    if body.model != CHAT_MODEL:
        raise _unknown_model(body.model, CHAT_MODEL)
    if body.n != 1:
        raise OpenAIProtocolError(400, "Only n=1 is supported.", param="n")
    messages = [(m.role, m.text) for m in body.messages]
    questions = [text for role, text in messages if role == "user"]
    if not questions:
        raise OpenAIProtocolError(400, "messages must include a user message.", param="messages")
    passages = passages_from_messages(messages)
    answerer = state.answerer

    def work() -> str:
        if body.wants_json:
            # Documents: the passages if the prompt has any, else the transcript the user sent.
            source = "\n\n".join(p.text for p in passages) if passages else questions[-1]
            return json.dumps(answerer.document(source), ensure_ascii=False)
        return answerer.answer(questions[-1], passages).text

    content = await anyio.to_thread.run_sync(work)
    content, finish_reason = _truncate(content, body.token_limit)
    prompt_tokens = sum(count_tokens(text) for _, text in messages)
    usage = _usage(prompt_tokens, count_tokens(content))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = _stream_events(
            completion_id, created, content, finish_reason, usage if include_usage else None
        )
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": CHAT_MODEL,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
            }
        ],
        "usage": usage,
    }


_MODEL_IDS = (EMBEDDING_MODEL, TRANSCRIPTION_MODEL, CHAT_MODEL)


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "record"}


def _install_error_handlers(app: FastAPI) -> None:
    async def protocol_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenAIProtocolError)
        return exc.response()

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(location) or None
        message = f"Invalid request: {first.get('msg', 'malformed body')}"
        if param:
            message += f" (at '{param}')"
        return error_response(400, message, param=param)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), type=kind)

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        OpenAIProtocolError: protocol_error,
        RequestValidationError: validation_error,
        StarletteHTTPException: http_error,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)


def _embedding_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise OpenAIProtocolError(400, "'input' must not be empty.", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise OpenAIProtocolError(
            400,
            "Token-array input is not supported by this server; send strings.",
            param="input",
        )
    strings = [t for t in texts if isinstance(t, str)]
    if any(not s.strip() for s in strings):
        raise OpenAIProtocolError(400, "'input' must not contain empty strings.", param="input")
    if len(strings) > MAX_EMBEDDING_INPUTS:
        raise OpenAIProtocolError(
            400,
            f"'input' holds {len(strings)} items; send at most {MAX_EMBEDDING_INPUTS}.",
            param="input",
        )
    return strings


def _encode_vector(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes, which the SDK decodes by default.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _truncate(content: str, limit: int | None) -> tuple[str, str]:
    if limit is None:
        return content, "stop"
    spans = token_spans(content)
    if len(spans) <= limit:
        return content, "stop"
    return content[: spans[limit - 1][1]], "length"


def _stream_events(
    completion_id: str,
    created: int,
    content: str,
    finish_reason: str,
    usage: dict[str, int] | None,
) -> Iterator[str]:
    """OpenAI's SSE framing: role first, then content pieces, then the finish, usage, [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": CHAT_MODEL,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            payload["usage"] = None
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in _STREAM_PIECE.findall(content):
        yield chunk({"content": piece}, None)
    yield chunk({}, finish_reason)
    if usage is not None:
        final = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": CHAT_MODEL,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"


def _transcription_response(
    result: Transcription, response_format: str, *, words: bool
) -> Response | dict[str, Any]:
    text = result.text
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format in {"srt", "vtt"}:
        return PlainTextResponse(_subtitles(result, vtt=response_format == "vtt"))
    usage = {"type": "duration", "seconds": max(1, round(result.duration))}
    if response_format == "json":
        return {"text": text, "usage": usage}
    body: dict[str, Any] = {
        "task": "transcribe",
        # OpenAI names the language in full in verbose_json ("english"), not by ISO code.
        "language": "english" if result.language == "en" else result.language,
        "duration": result.duration,
        "text": text,
        "segments": [
            {
                "id": s.id,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in result.segments
        ],
        "usage": usage,
    }
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments
            for w in s.words
        ]
    return body


def _timestamp(seconds: float, *, vtt: bool) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{'.' if vtt else ','}{millis:03d}"


def _subtitles(result: Transcription, *, vtt: bool) -> str:
    blocks = ["WEBVTT\n"] if vtt else []
    for number, s in enumerate(result.segments, start=1):
        cue = f"{_timestamp(s.start, vtt=vtt)} --> {_timestamp(s.end, vtt=vtt)}\n{s.text.strip()}\n"
        blocks.append(cue if vtt else f"{number}\n{cue}")
    return "\n".join(blocks)
