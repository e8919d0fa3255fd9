"""Streaming multipart upload: the file goes from the socket to storage chunk by chunk.

The body is parsed as it arrives (python-multipart's push parser). The first bytes of the file
are held back until its type is known (magic bytes and extension must agree); then a writer
task streams the rest to storage through a small bounded buffer, so memory stays flat however
large the recording. Anything refused (type, size, a name with a path in it) aborts the write:
no object, no row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.kit.errors import PayloadTooLargeError, ValidationError, first_error
from app.kit.security.files import SNIFF_BYTES, MediaType, check_media
from app.kit.storage import ObjectStore

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 8  # the form has a title; a few more are tolerated, not thousands
# Bytes of headers, fields and boundaries a multipart body may add around the file: the whole
# body, however it is sent (Content-Length or chunked), is held to the file's cap plus this.
MULTIPART_OVERHEAD = 64 * 1024
MAX_BOUNDARY = 70  # RFC 2046: a boundary is 1 to 70 characters


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


@dataclass
class UploadResult:
    fields: dict[str, str]
    filename: str
    media: MediaType
    size: int


def check_filename(filename: str) -> str:
    # A name that carries a path is refused, not quietly trimmed: the client is doing something
    # it should not, and saying so helps more than guessing what it meant.
    if (
        not filename
        or "/" in filename
        or "\\" in filename
        or "\x00" in filename
        or filename in {".", ".."}
        or len(filename) > 255
    ):
        raise ValidationError(
            "The file name must be a plain name (no folders, no '..'), up to 255 characters.",
            errors=[{"loc": ["body", "file"], "msg": "invalid file name", "type": "filename"}],
        )
    return filename


class StreamingUpload:
    """Parse one multipart request with a single file part named ``file``."""

    def __init__(self, store: ObjectStore, key_for: Any, *, max_bytes: int) -> None:
        self.store = store
        self.key_for = key_for  # MediaType -> object key, called once the type is known
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.key: str | None = None
        self._part = _Part()
        self._headers: dict[str, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._pending: list[tuple[str, _Part, bytes]] = []
        self._file_seen = False
        self._in_file = False
        self._filename = ""
        self._head = bytearray()
        self._size = 0
        self._media: MediaType | None = None
        self._written: int | None = None
        self._complete = False  # the closing boundary was read
        self._send: MemoryObjectSendStream[bytes]
        self._receive: MemoryObjectReceiveStream[bytes]
        self._tg: TaskGroup

    # -- parser callbacks (synchronous: they only record what happened) -----------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower().decode("latin-1")] = bytes(
            self._header_value
        )
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition = self._headers.get("content-disposition", b"")
        _, options = parse_options_header(disposition)
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        self._part.filename = (
            raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        )
        self._pending.append(("begin", self._part, b""))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._pending.append(("data", self._part, bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self._pending.append(("end", self._part, b""))

    def _on_end(self) -> None:
        self._complete = True

    # -- driving ------------------------------------------------------------------------------

    async def run(self, request: Request) -> UploadResult:
        parser, body_limit = self._parser(request)
        send, receive = anyio.create_memory_object_stream[bytes](max_buffer_size=8)
        self._send = send
        self._receive = receive
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await self._parse(request, parser, body_limit)
                except BaseException:
                    tg.cancel_scope.cancel()
                    raise
                finally:
                    send.close()
        except BaseExceptionGroup as group:
            # A task group wraps what its tasks raise; the caller wants the error itself (a 413
            # is a 413, not a 500 about a group).
            raise first_error(group) from group
        finally:
            receive.close()
        if self._media is None or self._written is None:  # pragma: no cover - guarded above
            raise ValidationError("The upload ended before the file did.")
        return UploadResult(
            fields=self.fields, filename=self._filename, media=self._media, size=self._size
        )

    def _parser(self, request: Request) -> tuple[MultipartParser, int]:
        """The push parser for this request's boundary, and the cap on the whole body."""
        ctype, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary or len(boundary) > MAX_BOUNDARY:
            raise ValidationError(
                "Send the recording as multipart/form-data (a boundary of at most 70 "
                "characters) with a 'file' part (and a 'title')."
            )
        body_limit = self.max_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > body_limit:
            raise self._too_large()
        parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )
        return parser, body_limit

    async def _parse(self, request: Request, parser: MultipartParser, body_limit: int) -> None:
        received = 0
        async for body in request.stream():
            received += len(body)
            if received > body_limit:  # chunked, or more than it declared
                raise self._too_large()
            try:
                parser.write(body)
            except MultipartParseError as exc:
                raise ValidationError(f"The multipart body is malformed: {exc}.") from exc
            # Events carry their part: one network chunk may hold several parts.
            for kind, part, data in self._drain():
                await self._handle(kind, part, data)
        try:
            parser.finalize()  # checks nothing in python-multipart 0.0.x: the checks below do
        except MultipartParseError as exc:
            raise ValidationError(f"The multipart body is malformed: {exc}.") from exc
        if not self._file_seen:
            raise ValidationError("The form has no 'file' part.")
        if not self._complete:
            # Without its closing boundary the body was cut off, perhaps inside the file: what
            # arrived must not be stored as if it were the recording.
            raise ValidationError(
                "The upload was cut off before the multipart body ended (no closing boundary); "
                "send it again."
            )

    # -- one parser event at a time -----------------------------------------------------------

    async def _handle(self, kind: str, part: _Part, data: bytes) -> None:
        if kind == "begin":
            self._begin_part(part)
        elif kind == "data" and self._in_file:
            await self._file_data(data)
        elif kind == "data":
            part.data += data
            if len(part.data) > MAX_FIELD_BYTES:
                raise ValidationError(f"The form field '{part.name}' is too long.")
        elif kind == "end" and self._in_file:
            self._in_file = False
            if self._media is None:
                if not self._head:
                    raise ValidationError("The file is empty.")
                await self._start_writing()
            await self._send.aclose()
        elif kind == "end":
            if len(self.fields) >= MAX_FIELDS:
                raise ValidationError(f"The form has more than {MAX_FIELDS} fields.")
            self.fields[part.name] = part.data.decode("utf-8", "replace")

    def _begin_part(self, part: _Part) -> None:
        self._in_file = part.filename is not None or part.name == "file"
        if not self._in_file:
            return
        if self._file_seen or part.name != "file":
            raise ValidationError("Send exactly one file, in the part named 'file'.")
        self._file_seen = True
        self._filename = check_filename(part.filename or "")

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The recording is larger than the {self.max_bytes // 1024**2} MiB limit."
        )

    async def _file_data(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_bytes:
            raise self._too_large()
        if self._media is not None:
            await self._send.send(data)
            return
        self._head += data
        if len(self._head) >= SNIFF_BYTES:
            await self._start_writing()

    async def _start_writing(self) -> None:
        """The type is known from the first bytes: start the storage writer, hand it the head."""
        self._media = media = check_media(bytes(self._head), self._filename)
        self.key = self.key_for(media)
        self._tg.start_soon(self._write, self.key, media)
        await self._send.send(bytes(self._head))

    async def _write(self, key: str, media: MediaType) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            async with self._receive:
                async for chunk in self._receive:
                    yield chunk

        self._written = await self.store.write(key, chunks(), content_type=media.content_type)

    def _drain(self) -> list[tuple[str, _Part, bytes]]:
        events, self._pending = self._pending, []
        return events
