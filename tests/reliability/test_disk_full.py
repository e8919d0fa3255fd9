"""Disk full on the object store's path (issue 15, item 7).

An upload that finds the disk full (ENOSPC, or the store's user over quota, EDQUOT) is refused
with 507 problem+json, and leaves no recording, no job and no partial object: the space the
attempt took is given back, so the next upload that fits is accepted.

The real case mounts a 256 KiB filesystem (tmpfs, else a loop-mounted ext4 image) over the
store and skips, saying why, where mounting is not permitted. The always-run case writes the
upload to /dev/full, where the kernel itself answers every write with ENOSPC.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from app.kit.errors import InsufficientStorageError
from app.kit.storage import FileStore
from tests.app.conftest import Tenant
from tests.app.recordings.test_upload import counts, upload, wav_bytes

SECOND = 32_000  # bytes of 16 kHz 16-bit mono WAV per second


def everything_under(root: Path) -> list[Path]:
    """Files and folders: a failed upload leaves neither a partial file nor its empty folder."""
    return sorted(root.rglob("*")) if root.exists() else []


def assert_out_of_space(response: Any) -> None:
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "https://record.dev/problems/insufficient_storage"
    assert body["title"] == "Insufficient Storage"
    assert body["status"] == 507
    assert body["code"] == "insufficient_storage"
    assert "out of storage space" in body["detail"]
    assert "try again later" in body["detail"].lower()
    assert "operator" in body["detail"]
    assert body["request_id"]


async def test_upload_larger_than_the_disk_is_507_and_leaves_nothing(
    small_disk: Path, client, settings, org_a: Tenant
):
    response = await upload(client, org_a, wav_bytes(20.0), "all-hands.wav")  # ~640 KB
    assert_out_of_space(response)
    assert counts(settings) == (0, 0)
    assert everything_under(small_disk) == []

    # The space the attempt took was given back: one that fits is accepted.
    response = await upload(client, org_a, wav_bytes(2.0), "stand-up.wav")  # ~64 KB
    assert response.status_code == 202, response.text
    assert counts(settings) == (1, 1)


async def test_a_disk_filled_by_earlier_uploads_refuses_the_next_and_keeps_the_rest(
    small_disk: Path, client, settings, org_a: Tenant
):
    kept = wav_bytes(3.0)  # ~96 KB of the 256
    response = await upload(client, org_a, kept, "first.wav")
    assert response.status_code == 202, response.text
    recording_id = response.json()["recording"]["id"]

    assert_out_of_space(await upload(client, org_a, wav_bytes(6.0), "second.wav"))

    assert counts(settings) == (1, 1)
    files = [p for p in everything_under(small_disk) if p.is_file()]
    assert len(files) == 1
    assert recording_id in str(files[0])
    media = await client.get(f"/api/recordings/{recording_id}/media", headers=org_a.auth())
    assert media.status_code == 200
    assert media.content == kept


@pytest.fixture
def disk_answers_enospc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's temporary files open on /dev/full: the kernel answers each write ENOSPC.
    The temporary file is still made (and must still be removed)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    make_temp = tempfile.mkstemp

    def on_dev_full(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = make_temp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", on_dev_full)


async def test_enospc_on_write_is_507_and_leaves_nothing(
    disk_answers_enospc: None, client, settings, org_a: Tenant
):
    response = await upload(client, org_a, wav_bytes(1.0), "stand-up.wav")
    assert_out_of_space(response)
    assert counts(settings) == (0, 0)
    assert everything_under(settings.state_dir / "objects") == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_the_store_reports_a_full_disk_or_quota_as_insufficient_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
):
    store = FileStore(tmp_path / "objects")

    def disk_full(*args: Any) -> None:
        raise OSError(code, os.strerror(code))

    # The last step of a write: everything before it must be undone too.
    monkeypatch.setattr(os, "replace", disk_full)

    async def chunks() -> Any:
        yield b"x" * SECOND

    with pytest.raises(InsufficientStorageError) as raised:
        await store.write("org/a/recordings/b/original.wav", chunks(), content_type="audio/wav")
    assert isinstance(raised.value.__cause__, OSError)
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []


async def test_other_os_errors_stay_what_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = FileStore(tmp_path / "objects")

    def denied(*args: Any) -> None:
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(os, "replace", denied)

    async def chunks() -> Any:
        yield b"x"

    with pytest.raises(PermissionError):
        await store.write("org/a/recordings/b/original.wav", chunks(), content_type="audio/wav")
