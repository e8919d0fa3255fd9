"""Object storage for real: FileStore on a real folder, S3Store against moto's S3 server.

moto runs in server mode on loopback, so boto3 speaks real HTTP (multipart, ranges, presigned
URLs) to it; only AWS itself is replaced. moto honours SSE headers without a KMS key and
enforces the 5 MiB minimum for non-last parts, like S3.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.lowlevel
import httpx
import pytest

from app.kit.errors import ValidationError
from app.kit.storage import MIN_PART_SIZE, FileStore, S3Store, recording_key
from tests.conftest import free_port

MiB = 1024 * 1024
REGION = "us-east-1"
_buckets = itertools.count()


@dataclass
class MotoS3:
    endpoint_url: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION)

    def store(self, bucket: str, **kwargs: Any) -> S3Store:
        return S3Store(bucket=bucket, region=REGION, endpoint_url=self.endpoint_url, **kwargs)

    def new_bucket(self) -> str:
        name = f"record-test-{os.getpid()}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def pending_uploads(self, bucket: str) -> list[str]:
        listing = self.client().list_multipart_uploads(Bucket=bucket)
        return [item["Key"] for item in listing.get("Uploads", [])]


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the session; dummy credentials so boto3 never looks further."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        # No shared config or instance metadata: the host's AWS setup must not leak in.
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield MotoS3(endpoint_url=f"http://127.0.0.1:{port}")
        finally:
            server.stop()


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.new_bucket()


def pattern(size: int) -> bytes:
    """Deterministic bytes whose every MiB differs, so a misordered part shows."""
    block = hashlib.sha256(str(size).encode()).digest() * (MiB // 32)
    return b"".join(bytes([i % 251]) + block[1:] for i in range(size // MiB + 1))[:size]


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await anyio.lowlevel.checkpoint()


async def failing_after(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    async for chunk in chunked(data, MiB):
        yield chunk
    raise error


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


KEY = "org/0b6c1b8e-0000-4000-8000-000000000001/recordings/r1/original.wav"


# --- FileStore -----------------------------------------------------------------------------


async def test_file_store_round_trip(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    data = pattern(3 * MiB + 17)
    assert await store.write(KEY, chunked(data, 64 * 1024), content_type="audio/wav") == len(data)
    assert await store.exists(KEY)
    assert await store.size(KEY) == len(data)
    assert await store.head(KEY, 4096) == data[:4096]
    assert await collect(store.read(KEY)) == data
    target = tmp_path / "copy.wav"
    assert await store.download_to(KEY, target) == len(data)
    assert target.read_bytes() == data
    assert store.local_path(KEY) == (tmp_path / "objects" / KEY).resolve()
    assert await store.presigned_get(KEY) is None
    assert await store.presigned_put(KEY, content_type="audio/wav") is None


async def test_file_store_write_is_atomic(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    await store.write(KEY, chunked(b"old content", 4), content_type="audio/wav")
    seen_during_write: list[bytes] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"new "
        # Mid-write, readers still see the whole old object, never a partial new one.
        seen_during_write.append(await collect(store.read(KEY)))
        yield b"content"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await store.write(KEY, chunks(), content_type="audio/wav")
    assert seen_during_write == [b"old content"]
    assert await collect(store.read(KEY)) == b"old content"
    files = files_under(tmp_path / "objects")
    assert files == [(tmp_path / "objects" / KEY)], "no .partial file is left behind"


async def test_file_store_failed_first_write_leaves_no_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="boom"):
        await store.write(KEY, failing_after(b"x" * 100, ValueError("boom")), content_type="a/b")
    assert not await store.exists(KEY)
    assert await store.size(KEY) is None
    assert files_under(tmp_path / "objects") == []


async def test_file_store_cancelled_write_leaves_no_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")

    async def stalls() -> AsyncIterator[bytes]:
        yield b"RIFF"
        await anyio.sleep(3600)
        yield b"never"

    with anyio.move_on_after(0.2):
        await store.write(KEY, stalls(), content_type="audio/wav")
    assert files_under(tmp_path / "objects") == []


@pytest.mark.parametrize(
    "key",
    [
        "../outside.wav",
        "org/../../outside.wav",
        "/etc/passwd",
        "//etc/passwd",
        "org//x.wav",
        "org/./x.wav",
        "org/",
        ".",
        "",
        "Org/Upper.wav",
        "org/x\x00.wav",
        "org\\..\\x.wav",
    ],
)
async def test_file_store_refuses_keys_that_could_escape(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="not a server-made object key"):
        await store.write(key, chunked(b"data", 4), content_type="a/b")
    for call in (store.exists, store.size, store.delete):
        with pytest.raises(ValueError, match="not a server-made object key"):
            await call(key)
    with pytest.raises(ValueError, match="not a server-made object key"):
        store.local_path(key)
    assert files_under(tmp_path) == []


async def test_file_store_refuses_symlinks_out_of_its_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "objects" / "org").symlink_to(outside)
    with pytest.raises(ValidationError, match="outside its directory"):
        await store.write("org/x.wav", chunked(b"data", 4), content_type="a/b")
    assert list(outside.iterdir()) == []


async def test_file_store_delete_prunes_empty_folders_but_not_the_root(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FileStore(root)
    other = KEY.replace("/r1/", "/r2/")
    await store.write(KEY, chunked(b"one", 2), content_type="a/b")
    await store.write(other, chunked(b"two", 2), content_type="a/b")

    await store.delete(KEY)
    assert not (root / KEY).parent.exists(), "the recording's folder went with its object"
    assert (root / other).read_bytes() == b"two", "the sibling recording is untouched"

    await store.delete(other)
    assert root.is_dir(), "the root stays"
    assert list(root.iterdir()) == []
    await store.delete(other)  # deleting what is gone is not an error
    assert root.is_dir()


# --- S3Store ---------------------------------------------------------------------------------


async def test_s3_multipart_write_and_reads(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    store = moto_s3.store(bucket, part_size=MIN_PART_SIZE)
    data = pattern(12 * MiB + 123)
    # Odd chunk sizes: parts are cut from a buffer, not from the chunks as they come.
    written = await store.write(KEY, chunked(data, 3 * MiB + 7), content_type="audio/wav")
    assert written == len(data)

    s3 = moto_s3.client()
    head = s3.head_object(Bucket=bucket, Key=KEY)
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "audio/wav"
    assert head["ETag"].endswith('-3"'), "5 MiB + 5 MiB + the rest: three parts"
    assert moto_s3.pending_uploads(bucket) == []

    assert await store.exists(KEY)
    assert await store.size(KEY) == len(data)
    assert await store.head(KEY, 4096) == data[:4096]
    assert await collect(store.read(KEY)) == data
    target = tmp_path / "download.wav"
    assert await store.download_to(KEY, target) == len(data)
    assert target.read_bytes() == data
    assert store.local_path(KEY) is None

    await store.delete(KEY)
    assert not await store.exists(KEY)
    assert await store.size(KEY) is None
    assert moto_s3.keys(bucket) == []
    await store.delete(KEY)  # idempotent, like S3


async def test_s3_default_part_size_and_small_objects(moto_s3: MotoS3, bucket: str) -> None:
    store = moto_s3.store(bucket)
    data = pattern(9 * MiB)
    await store.write(KEY, chunked(data, MiB), content_type="audio/wav")
    s3 = moto_s3.client()
    assert s3.head_object(Bucket=bucket, Key=KEY)["ETag"].endswith('-2"'), "8 MiB + 1 MiB"
    assert await collect(store.read(KEY)) == data

    small = KEY.replace("original.wav", "small.wav")
    await store.write(small, chunked(b"tiny", 2), content_type="audio/wav")
    assert await store.size(small) == 4
    assert await store.head(small, 4096) == b"tiny"  # a range past the end is cut, not refused
    empty = KEY.replace("original.wav", "empty.wav")
    assert await store.write(empty, chunked(b"", 1), content_type="audio/wav") == 0
    assert await store.size(empty) == 0


def test_s3_refuses_parts_below_the_s3_minimum(moto_s3: MotoS3) -> None:
    with pytest.raises(ValueError, match="at least"):
        moto_s3.store("record-any", part_size=MIN_PART_SIZE - 1)
    with pytest.raises(ValueError, match="kms_key_id"):
        moto_s3.store("record-any", sse="AES256", kms_key_id="alias/x")


async def test_s3_error_mid_stream_aborts_the_upload(moto_s3: MotoS3, bucket: str) -> None:
    store = moto_s3.store(bucket, part_size=MIN_PART_SIZE)
    # 11 MiB: two parts are already stored on the server when the stream fails.
    data = pattern(11 * MiB)
    with pytest.raises(ConnectionResetError):
        await store.write(
            KEY, failing_after(data, ConnectionResetError("client gone")), content_type="a/b"
        )
    assert moto_s3.keys(bucket) == []
    assert moto_s3.pending_uploads(bucket) == []
    assert not await store.exists(KEY)


async def test_s3_cancelled_write_aborts_the_upload(moto_s3: MotoS3, bucket: str) -> None:
    store = moto_s3.store(bucket, part_size=MIN_PART_SIZE)

    async def stalls() -> AsyncIterator[bytes]:
        yield pattern(6 * MiB)  # one part sent
        await anyio.sleep(3600)
        yield b"never"

    with anyio.move_on_after(1.0) as scope:
        await store.write(KEY, stalls(), content_type="a/b")
    assert scope.cancelled_caught
    assert moto_s3.keys(bucket) == []
    assert moto_s3.pending_uploads(bucket) == []


async def test_s3_failed_abort_keeps_the_original_error(moto_s3: MotoS3, bucket: str) -> None:
    store = moto_s3.store(bucket)
    real_call = store._call

    async def call(method: str, **kwargs: Any) -> Any:
        if method == "abort_multipart_upload":
            raise ConnectionError("S3 unreachable")
        return await real_call(method, **kwargs)

    store._call = call  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="refused") as caught:
        await store.write(KEY, failing_after(b"x", ValueError("refused")), content_type="a/b")
    assert any("aborting the multipart upload failed" in note for note in caught.value.__notes__)


@pytest.mark.parametrize(
    ("sse", "expected"), [("aws:kms", "aws:kms"), ("AES256", "AES256"), (None, None)]
)
async def test_s3_server_side_encryption(
    moto_s3: MotoS3, bucket: str, sse: str | None, expected: str | None
) -> None:
    store = moto_s3.store(bucket, sse=sse)
    await store.write(KEY, chunked(b"secret", 3), content_type="audio/wav")
    head = moto_s3.client().head_object(Bucket=bucket, Key=KEY)
    assert head.get("ServerSideEncryption") == expected


async def test_s3_encryption_with_a_named_kms_key(moto_s3: MotoS3, bucket: str) -> None:
    import boto3

    kms = boto3.client("kms", endpoint_url=moto_s3.endpoint_url, region_name=REGION)
    key_id = kms.create_key(Description="recordings")["KeyMetadata"]["Arn"]
    store = moto_s3.store(bucket, kms_key_id=key_id)
    await store.write(KEY, chunked(b"secret", 3), content_type="audio/wav")
    head = moto_s3.client().head_object(Bucket=bucket, Key=KEY)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_id

    upload = await store.presigned_put(KEY, content_type="audio/wav")
    assert upload is not None
    assert upload.headers["x-amz-server-side-encryption-aws-kms-key-id"] == key_id


async def test_s3_presigned_get_and_put_work_over_plain_http(moto_s3: MotoS3, bucket: str) -> None:
    store = moto_s3.store(bucket, prefix="/tenant-x/")
    data = pattern(MiB + 5)
    upload = await store.presigned_put(
        KEY, content_type="audio/wav", expires_in=120, content_length=len(data)
    )
    assert upload is not None
    assert upload.method == "PUT"
    assert upload.expires_in == 120
    assert upload.headers == {
        "Content-Type": "audio/wav",
        "x-amz-server-side-encryption": "aws:kms",
    }
    query = parse_qs(urlsplit(upload.url).query)
    assert query["X-Amz-Expires"] == ["120"]
    signed = query["X-Amz-SignedHeaders"][0].split(";")
    # Signed, so real S3 refuses another type, another size or a plain-text object.
    assert {"content-type", "content-length", "x-amz-server-side-encryption"} <= set(signed)

    async with httpx.AsyncClient() as http:
        put = await http.put(upload.url, content=data, headers=upload.headers)
        assert put.status_code == 200, put.text
        assert moto_s3.keys(bucket) == [f"tenant-x/{KEY}"], "the prefix is applied, once"
        assert await store.size(KEY) == len(data)
        head = moto_s3.client().head_object(Bucket=bucket, Key=f"tenant-x/{KEY}")
        assert head["ServerSideEncryption"] == "aws:kms"

        url = await store.presigned_get(KEY, expires_in=60)
        assert url is not None
        get = await http.get(url)
        assert get.status_code == 200
        assert get.content == data


def test_recording_key_shape() -> None:
    from uuid import UUID

    org = UUID("0b6c1b8e-0000-4000-8000-000000000001")
    rec = UUID("0b6c1b8e-0000-4000-8000-000000000002")
    assert recording_key(org, rec, "wav") == f"org/{org}/recordings/{rec}/original.wav"


# --- copy (direct uploads move from their staging key) -------------------------------------


async def test_file_store_copy(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    data = pattern(2 * MiB + 5)
    await store.write(f"staging/{KEY}", chunked(data, MiB), content_type="audio/wav")
    await store.copy(f"staging/{KEY}", KEY)
    assert await collect(store.read(KEY)) == data
    assert await store.exists(f"staging/{KEY}")  # a copy, not a move


async def test_s3_copy_is_server_side_and_drops_the_staging_tag(
    moto_s3: MotoS3, bucket: str
) -> None:
    from app.kit.storage import STAGING_TAGGING

    store = moto_s3.store(bucket)
    s3 = moto_s3.client()
    data = pattern(MiB)
    s3.put_object(Bucket=bucket, Key=f"staging/{KEY}", Body=data, Tagging=STAGING_TAGGING)
    await store.copy(f"staging/{KEY}", KEY)
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data
    assert s3.get_object_tagging(Bucket=bucket, Key=KEY)["TagSet"] == []
    assert s3.get_object_tagging(Bucket=bucket, Key=f"staging/{KEY}")["TagSet"] == [
        {"Key": "record-staging", "Value": "1"}
    ]
    assert s3.head_object(Bucket=bucket, Key=KEY)["ServerSideEncryption"] == "aws:kms"
