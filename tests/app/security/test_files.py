"""File names, confined paths, media types by magic bytes, sizes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.kit.errors import PayloadTooLargeError, UnsupportedMediaTypeError, ValidationError
from app.kit.security.files import (
    ACCEPTED,
    check_media,
    check_size,
    limit_stream,
    resolve_under,
    safe_filename,
    sniff_media,
)

# --- safe_filename -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("talk.mp4", "talk.mp4"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("..", "file"),
        ("", "file"),
        ("\x00\x01", "file"),
        (".bashrc", "bashrc"),
        ("weekly sync (final).webm", "weekly sync (final).webm"),
        ("réunion été.mp3", "r_union _t_.mp3"),
        ("con.txt", "_con.txt"),
        ("a\r\nContent-Type: text.wav", "aContent-Type_ text.wav"),
    ],
)
def test_safe_filename(raw: str, expected: str) -> None:
    assert safe_filename(raw) == expected


def test_safe_filename_keeps_extension_when_cut() -> None:
    name = safe_filename("x" * 500 + ".webm", max_length=50)
    assert len(name) <= 50
    assert name.endswith(".webm")


@given(st.text(max_size=300))
def test_safe_filename_never_has_separators_or_dot_dot(raw: str) -> None:
    name = safe_filename(raw)
    assert name
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert not name.startswith(".")
    assert name.isascii()
    assert len(name) <= 200


# --- resolve_under -----------------------------------------------------------------------------


def test_resolve_under_joins_inside(tmp_path: Path) -> None:
    assert resolve_under(tmp_path, "org", "rec", "media.webm") == (
        tmp_path.resolve() / "org" / "rec" / "media.webm"
    )
    assert resolve_under(tmp_path, "a/b/./c") == tmp_path.resolve() / "a" / "b" / "c"


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("a", "../../b"),
        ("a/../../b",),
        ("a\\..\\..\\b",),
        ("/etc/passwd",),
        ("\\\\server\\share",),
        ("C:\\Windows",),
        ("c:secret",),
        ("a\x00b",),
    ],
)
def test_resolve_under_refuses_escapes(tmp_path: Path, parts: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError):
        resolve_under(tmp_path, *parts)


def test_resolve_under_refuses_symlink_out(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "link").symlink_to(tmp_path)
    with pytest.raises(ValidationError):
        resolve_under(base, "link", "x")


_segments = st.one_of(
    st.sampled_from(["..", ".", "", "/", "\\", "a", "b/..", "../a", "..\\", "C:", "~", "\x00"]),
    st.text(alphabet=st.sampled_from("./\\:a~\x00%2e"), max_size=12),
    st.text(max_size=12),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_segments, max_size=5))
def test_no_generated_path_escapes_base(tmp_path: Path, parts: list[str]) -> None:
    base = tmp_path.resolve()
    try:
        target = resolve_under(base, *parts)
    except ValidationError:
        return
    assert target == base or base in target.parents
    assert os.path.commonpath([base, target]) == str(base)


# --- media by magic bytes ----------------------------------------------------------------------


def _ebml(doctype: bytes) -> bytes:
    body = b"\x42\x86\x81\x01" + b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(body)]) + body + b"\x18\x53\x80\x67"


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    payload = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(payload)) + b"ftyp" + payload + b"\x00\x00\x00\x08free"


WEBM = _ebml(b"webm")
MKV = _ebml(b"matroska")
MP4 = _ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41")
M4A = _ftyp(b"M4A ", b"M4A ", b"isom", b"iso2")
MOV = _ftyp(b"qt  ", b"qt  ")
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64"
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 100
WAV = b"RIFF\x24\x08\x00\x00WAVEfmt "
OGG = b"OggS\x00\x02" + b"\x00" * 20
AAC_ADTS = b"\xff\xf1\x50\x80\x02\x1f\xfc"


@pytest.mark.parametrize(
    ("head", "name", "extension", "content_type"),
    [
        (WEBM, "call.webm", "webm", "video/webm"),
        (MP4, "call.mp4", "mp4", "video/mp4"),
        (MP4, "CALL.MP4", "mp4", "video/mp4"),
        (M4A, "memo.m4a", "m4a", "audio/mp4"),
        (MOV, "clip.mov", "mov", "video/quicktime"),
        (MOV, "clip.qt", "mov", "video/quicktime"),
        (MP3_ID3, "song.mp3", "mp3", "audio/mpeg"),
        (MP3_FRAME, "song.mp3", "mp3", "audio/mpeg"),
        (WAV, "take.wav", "wav", "audio/wav"),
        (OGG, "voice.ogg", "ogg", "audio/ogg"),
        (OGG, "voice.opus", "ogg", "audio/ogg"),
    ],
)
def test_check_media_accepts(head: bytes, name: str, extension: str, content_type: str) -> None:
    media = check_media(head, name)
    assert (media.extension, media.content_type) == (extension, content_type)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (MP4, "call.mp3"),  # extension and bytes disagree
        (WEBM, "call.mp4"),
        (MOV, "clip.webm"),
        (MKV, "film.webm"),  # Matroska is not WebM
        (MKV, "film.mkv"),
        (AAC_ADTS, "audio.mp3"),  # ADTS AAC is not an MPEG audio frame
        (b"<script>alert(1)</script>", "evil.mp4"),
        (b"%PDF-1.7", "doc.pdf"),
        (b"MZ\x90\x00", "setup.exe"),
        (WAV, "take"),
        (WAV, "take.wav.exe"),
    ],
)
def test_check_media_refuses(head: bytes, name: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as info:
        check_media(head, name)
    assert ACCEPTED in info.value.detail


def test_check_media_refuses_empty() -> None:
    with pytest.raises(ValidationError):
        check_media(b"", "a.webm")


@given(st.binary(max_size=64))
def test_sniff_never_crashes(head: bytes) -> None:
    assert sniff_media(head) <= {"webm", "mp4", "m4a", "mov", "mp3", "wav", "ogg"}


def test_truncated_ebml_header_is_not_webm() -> None:
    assert sniff_media(WEBM[:10]) == set()


# --- size --------------------------------------------------------------------------------------


def test_check_size() -> None:
    check_size(10, max_bytes=10)
    with pytest.raises(PayloadTooLargeError) as info:
        check_size(11, max_bytes=10)
    assert info.value.status_code == 413


async def test_limit_stream_counts_as_it_goes() -> None:
    async def chunks() -> object:
        for _ in range(5):
            yield b"x" * 4

    seen = [c async for c in limit_stream(chunks(), max_bytes=20)]  # type: ignore[arg-type]
    assert b"".join(seen) == b"x" * 20
    with pytest.raises(PayloadTooLargeError):
        async for _ in limit_stream(chunks(), max_bytes=19):  # type: ignore[arg-type]
            pass
