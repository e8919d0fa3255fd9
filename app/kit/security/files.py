"""Files from users: safe names, paths that cannot escape their directory, media type and size.

Uploads are checked twice over: by their first bytes (the magic numbers of the container) and
by their name's extension, and both must name the same accepted type. The bytes stop a script
renamed ``talk.mp4``; the extension stops a file the browser or the transcoder would treat as
something else (an MP4 named ``.mp3``). The client's Content-Type header is never trusted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from app.kit.errors import PayloadTooLargeError, UnsupportedMediaTypeError, ValidationError

# Canonical extension -> the Content-Type we store and serve it with.
MEDIA_TYPES: dict[str, str] = {
    "webm": "video/webm",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "m4a": "audio/mp4",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
}
# Other spellings of the same formats that recorders and phones produce.
EXTENSION_ALIASES: dict[str, str] = {"qt": "mov", "oga": "ogg", "opus": "ogg", "wave": "wav"}
# Enough for every signature below: the EBML header of a WebM file is ~40 bytes and an ftyp box
# rarely lists more than a dozen brands.
SNIFF_BYTES = 4096
ACCEPTED = ", ".join(MEDIA_TYPES)

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._ \-()\[\]+]")
# Names Windows refuses whatever the extension; a download saved under one misbehaves there.
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)


@dataclass(frozen=True)
class MediaType:
    extension: str
    content_type: str


# --- names and paths -------------------------------------------------------------------------


def safe_filename(name: str, *, default: str = "file", max_length: int = 200) -> str:
    """A name that is safe to put on disk or in a Content-Disposition header.

    Only the last path component survives (``../../etc/passwd`` -> ``passwd``), then anything
    outside a small ASCII set becomes ``_``, leading dots go (no hidden files, no ``..``), and
    the result is cut to ``max_length`` keeping the extension.
    """
    name = unicodedata.normalize("NFKC", name).replace("\x00", "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip(" .")
    name = re.sub(r"_{2,}", "_", name).lstrip(".")
    if not name or set(name) <= {"_", "."}:
        return default
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = f"_{stem}"
    ext = ext[:16]
    stem = stem[: max(1, max_length - len(ext) - 1)] if ext else stem[:max_length]
    return f"{stem}.{ext}" if ext else stem


def resolve_under(base: str | Path, *parts: str) -> Path:
    """``base / parts...`` resolved, refusing anything that would land outside ``base``.

    Refused: NUL bytes, absolute parts (POSIX or Windows, drive letters, UNC), ``..``
    components, and symlinks inside ``base`` that point out of it (checked on the resolved
    path, so a link made after this call is the caller's business: open with O_NOFOLLOW then).
    """
    root = Path(base).resolve()
    relative: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ValidationError("Path parts must be text.")
        if "\x00" in part:
            raise ValidationError("The path contains a NUL byte.")
        if (
            PurePosixPath(part).is_absolute()
            or PureWindowsPath(part).is_absolute()
            or PureWindowsPath(part).drive
            or part.startswith(("/", "\\"))
        ):
            raise ValidationError("The path must be relative.")
        pieces = [p for p in re.split(r"[\\/]", part) if p not in ("", ".")]
        if ".." in pieces:
            raise ValidationError("The path must not contain '..'.")
        relative.extend(pieces)
    target = root.joinpath(*relative).resolve()
    if not target.is_relative_to(root):
        raise ValidationError("The path leads outside its directory.")
    return target


# --- media type by magic bytes ----------------------------------------------------------------


def _read_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``pos``: (value, next position), None if truncated."""
    if pos >= len(data) or data[pos] == 0:
        return None
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(data):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for byte in data[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, pos + length


def _ebml_doctype(head: bytes) -> str | None:
    """The DocType inside the EBML header ("webm", "matroska"), or None."""
    size = _read_vint(head, 4, keep_marker=False)
    if size is None:
        return None
    header_size, pos = size
    end = min(len(head), pos + header_size)
    while pos < end:
        element = _read_vint(head, pos, keep_marker=True)
        if element is None:
            return None
        element_id, pos = element
        length = _read_vint(head, pos, keep_marker=False)
        if length is None:
            return None
        data_size, pos = length
        if element_id == 0x4282:  # DocType
            return head[pos : pos + data_size].rstrip(b"\x00").decode("ascii", "replace")
        pos += data_size
    return None


_MP4_BRANDS = frozenset(
    {
        b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"iso9",
        b"mp41", b"mp42", b"mp71", b"avc1", b"dash", b"M4V ", b"M4VH", b"M4VP",
        b"mmp4", b"MSNV", b"NDAS", b"f4v ", b"3gp4", b"3gp5", b"3gp6",
    }
)  # fmt: skip
_M4A_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A "})
_QT_BRAND = b"qt  "


def _iso_bmff_extensions(head: bytes) -> set[str]:
    """Which of mp4/m4a/mov an ISO base media file's ftyp brands allow."""
    box_size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    compatible = [head[i : i + 4] for i in range(16, min(len(head), max(box_size, 16)) - 3, 4)]
    brands = {major, *compatible}
    allowed: set[str] = set()
    if major == _QT_BRAND or _QT_BRAND in brands:
        allowed.add("mov")
    if brands & _M4A_BRANDS:
        # An audio-only MP4; players and ffmpeg read it under either name.
        allowed |= {"m4a", "mp4"}
    if brands & _MP4_BRANDS:
        allowed |= {"mp4", "m4a"}
    return allowed


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG-1/2/2.5 audio frame header (FF Ex / FF Fx), not AAC-in-ADTS (layer bits 00)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    sample_rate = (head[2] >> 2) & 0b11
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and sample_rate != 0b11


def sniff_media(head: bytes) -> set[str]:
    """The accepted extensions the first bytes of a file are consistent with (empty: none)."""
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return {"webm"} if _ebml_doctype(head) == "webm" else set()
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _iso_bmff_extensions(head)
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return {"mp3"}
    if len(head) >= 12 and head[0:4] == b"RIFF" and head[8:12] == b"WAVE":
        return {"wav"}
    if head.startswith(b"OggS"):
        return {"ogg"}
    return set()


def extension_of(filename: str) -> str | None:
    """The canonical accepted extension of a name (aliases folded), or None."""
    _, dot, ext = safe_filename(filename, default="").rpartition(".")
    if not dot:
        return None
    ext = ext.lower()
    ext = EXTENSION_ALIASES.get(ext, ext)
    return ext if ext in MEDIA_TYPES else None


def check_media(head: bytes, filename: str) -> MediaType:
    """The canonical type of an upload from its first bytes and its name; both must agree.

    ``head`` is the first :data:`SNIFF_BYTES` (or fewer) bytes of the file.
    """
    if not head:
        raise ValidationError("The file is empty.")
    extension = extension_of(filename)
    if extension is None:
        raise UnsupportedMediaTypeError(
            f"Files named like {safe_filename(filename)!r} are not accepted; "
            f"upload one of: {ACCEPTED}."
        )
    detected = sniff_media(head[:SNIFF_BYTES])
    if not detected:
        raise UnsupportedMediaTypeError(
            f"The file's content is not a recognised audio or video format; "
            f"upload one of: {ACCEPTED}."
        )
    if extension not in detected:
        found = "/".join(sorted(detected))
        raise UnsupportedMediaTypeError(
            f"The file is named .{extension} but its content is {found}; rename it or upload "
            f"one of: {ACCEPTED}."
        )
    return MediaType(extension=extension, content_type=MEDIA_TYPES[extension])


# --- size -------------------------------------------------------------------------------------


def check_size(size: int, *, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"The file is {size} bytes; the limit is {max_bytes} bytes ({max_bytes // 2**20} MiB)."
        )


async def limit_stream(chunks: AsyncIterable[bytes], *, max_bytes: int) -> AsyncIterator[bytes]:
    """Pass chunks through, refusing once more than ``max_bytes`` have arrived.

    For bodies whose Content-Length is absent or lies: counted as they stream, never buffered.
    """
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > max_bytes:
            raise PayloadTooLargeError(f"The file is over the limit of {max_bytes} bytes.")
        yield chunk
