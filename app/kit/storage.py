"""Object storage: one interface, two backends (local files, S3).

Keys are made by the server (``org/<org_id>/recordings/<id>/original.<ext>``); no user string
ever becomes a path. Writes stream: the file backend writes to a temporary file and renames it
into place, the S3 backend sends a multipart upload part by part, so neither holds a whole
upload in memory, and an aborted write leaves no object behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import anyio

from app.kit.errors import InsufficientStorageError
from app.kit.metrics import STORAGE_BYTES, STORAGE_OPS
from app.kit.security.files import resolve_under
from app.settings import Settings

READ_CHUNK = 1024 * 1024
# S3 parts must be at least 5 MiB (except the last); 8 MiB keeps memory bounded and requests few.
MIN_PART_SIZE = 5 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
# A full disk, or the store's user over its quota: the server's to fix, not the caller's.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_KEY = re.compile(r"^[a-z0-9][a-z0-9/._\-]{0,500}$")


def recording_key(org_id: UUID, recording_id: UUID, extension: str) -> str:
    return f"org/{org_id}/recordings/{recording_id}/original.{extension}"


# Direct uploads land here first, tagged; ``complete`` copies them to their recording key. An
# upload never completed keeps the tag, and the bucket's lifecycle rule expires it.
STAGING_TAG_KEY = "record-staging"
STAGING_TAGGING = f"{STAGING_TAG_KEY}=1"


def staging_key(org_id: UUID, recording_id: UUID, extension: str) -> str:
    return f"staging/{recording_key(org_id, recording_id, extension)}"


def org_prefixes(org_id: UUID) -> tuple[str, ...]:
    """Every key prefix an org's objects live under: its recordings, and its direct uploads
    not (yet) completed, in staging."""
    recordings = f"org/{org_id}/"
    return recordings, f"staging/{recordings}"


# DeleteObjects takes at most 1000 keys, and a listing page holds at most 1000.
S3_BATCH = 1000


@dataclass(frozen=True)
class Purged:
    """What ``delete_prefix`` removed."""

    objects: int = 0
    uploads_aborted: int = 0


def _check_key(key: str) -> str:
    # Every segment must be a real name: "a/./b" or "a/" would map two keys to one file (or a
    # folder) in FileStore and to surprising names in S3.
    if not _KEY.match(key) or ".." in key or any(p in {"", "."} for p in key.split("/")):
        raise ValueError(f"not a server-made object key: {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """A folder of keys, ``a/b/``: a server-made key with a trailing slash. Never "" (the
    whole store), and at least two segments, so no caller empties a whole namespace."""
    if not prefix.endswith("/") or prefix.count("/") < 2:
        raise ValueError(f"not a server-made key prefix: {prefix!r}")
    _check_key(prefix[:-1])
    return prefix


@dataclass(frozen=True)
class PresignedUpload:
    url: str
    method: str
    headers: dict[str, str]
    expires_in: int


class ObjectStore(Protocol):
    backend: str

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int: ...

    def read(self, key: str) -> AsyncIterator[bytes]: ...

    async def download_to(self, key: str, path: Path) -> int: ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> Purged: ...

    async def copy(self, source: str, target: str) -> None: ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int | None: ...

    async def head(self, key: str, length: int) -> bytes: ...

    async def presigned_get(self, key: str, *, expires_in: int = 900) -> str | None: ...

    async def presigned_put(
        self,
        key: str,
        *,
        content_type: str,
        expires_in: int = 900,
        content_length: int | None = None,
        tagging: str | None = None,
    ) -> PresignedUpload | None: ...

    def local_path(self, key: str) -> Path | None: ...


class _Timed:
    def __init__(self, op: str) -> None:
        self.op = op
        self.started = time.perf_counter()

    def done(self, nbytes: int = 0, status: str = "ok") -> None:
        STORAGE_OPS.labels(self.op, status).inc()
        if nbytes:
            STORAGE_BYTES.labels(self.op).inc(nbytes)


class FileStore:
    """Objects as files under one directory (the local stack's default: `.record/objects`)."""

    backend = "file"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return resolve_under(self.root, *_check_key(key).split("/"))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        timer = _Timed("upload")
        try:
            written = await self._write(self._path(key), chunks)
        except OSError as exc:
            timer.done(status="error")
            if exc.errno in DISK_FULL:
                raise InsufficientStorageError() from exc
            raise
        except BaseException:
            timer.done(status="error")
            raise
        timer.done(written)
        return written

    async def _write(self, path: Path, chunks: AsyncIterable[bytes]) -> int:
        # Any of these can find the disk full: a new folder, the temporary file's inode, a
        # write, or the flush on close.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        written = 0
        try:
            async with await anyio.open_file(fd, "wb", closefd=True) as handle:
                async for chunk in chunks:
                    await handle.write(chunk)
                    written += len(chunk)
            os.replace(tmp_name, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(tmp_name).unlink(missing_ok=True)
            raise
        return written

    async def read(self, key: str) -> AsyncIterator[bytes]:
        timer = _Timed("download")
        total = 0
        async with await anyio.open_file(self._path(key), "rb") as handle:
            while chunk := await handle.read(READ_CHUNK):
                total += len(chunk)
                yield chunk
        timer.done(total)

    async def download_to(self, key: str, path: Path) -> int:
        timer = _Timed("download")
        source = self._path(key)
        await anyio.to_thread.run_sync(shutil.copyfile, source, path)
        size = (await anyio.Path(path).stat()).st_size
        timer.done(size)
        return size

    async def delete(self, key: str) -> None:
        timer = _Timed("delete")
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop the recording's now-empty folders, never the root.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break
        timer.done()

    async def delete_prefix(self, prefix: str) -> Purged:
        """Delete the folder and everything in it; nothing there is nothing to do."""
        timer = _Timed("delete")
        folder = resolve_under(self.root, *_check_prefix(prefix).rstrip("/").split("/"))

        def remove() -> int:
            if not folder.is_dir():
                return 0
            files = sum(1 for path in folder.rglob("*") if not path.is_dir())
            shutil.rmtree(folder)
            return files

        try:
            removed = await anyio.to_thread.run_sync(remove)
        except BaseException:
            timer.done(status="error")
            raise
        timer.done()
        return Purged(objects=removed)

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    async def head(self, key: str, length: int) -> bytes:
        async with await anyio.open_file(self._path(key), "rb") as handle:
            return bytes(await handle.read(length))

    async def presigned_get(self, key: str, *, expires_in: int = 900) -> str | None:
        return None  # served by the API itself

    async def presigned_put(
        self,
        key: str,
        *,
        content_type: str,
        expires_in: int = 900,
        content_length: int | None = None,
        tagging: str | None = None,
    ) -> PresignedUpload | None:
        return None  # browsers upload through the API

    async def copy(self, source: str, target: str) -> None:
        source_path = self._path(source)

        async def chunks() -> AsyncIterator[bytes]:
            async with await anyio.open_file(source_path, "rb") as handle:
                while chunk := await handle.read(READ_CHUNK):
                    yield chunk

        await self.write(target, chunks(), content_type="application/octet-stream")


class S3Store:
    """Objects in an S3 bucket (or any S3-compatible server), under an optional prefix.

    boto3 is synchronous: every call runs in a worker thread so the event loop never blocks.
    """

    backend = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        client_factory: Callable[[], Any] | None = None,
        part_size: int = PART_SIZE,
        sse: str | None = "aws:kms",
        kms_key_id: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            # S3 refuses the completion, not the part: fail here instead of after the upload.
            raise ValueError(f"S3 multipart parts must be at least {MIN_PART_SIZE} bytes")
        if kms_key_id and sse != "aws:kms":
            raise ValueError("kms_key_id needs sse='aws:kms'")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        # Encryption at rest is requested on every write (default aws:kms with the bucket's or
        # account's key); None leaves it to the bucket's default encryption, for S3-compatible
        # servers without a KMS.
        self.sse = sse
        self.kms_key_id = kms_key_id
        if client_factory is None:
            import boto3
            from botocore.config import Config

            def client_factory() -> Any:
                return boto3.client(
                    "s3",
                    region_name=region,
                    endpoint_url=endpoint_url,
                    config=Config(signature_version="s3v4", retries={"mode": "standard"}),
                )

        self._client = client_factory()

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def local_path(self, key: str) -> Path | None:
        return None

    def _sse_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.sse:
            params["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            params["SSEKMSKeyId"] = self.kms_key_id
        return params

    def _sse_headers(self) -> dict[str, str]:
        # A presigned PUT signs these headers: the uploader must send them exactly.
        headers: dict[str, str] = {}
        if self.sse:
            headers["x-amz-server-side-encryption"] = self.sse
        if self.kms_key_id:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.kms_key_id
        return headers

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: getattr(self._client, method)(**kwargs))

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        timer = _Timed("upload")
        full_key = self._key(key)
        upload = await self._call(
            "create_multipart_upload",
            Bucket=self.bucket,
            Key=full_key,
            ContentType=content_type,
            **self._sse_params(),
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        buffer = bytearray()
        written = 0

        async def send(data: bytes) -> None:
            number = len(parts) + 1
            result = await self._call(
                "upload_part",
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
            parts.append({"PartNumber": number, "ETag": result["ETag"]})

        try:
            async for chunk in chunks:
                buffer += chunk
                written += len(chunk)
                while len(buffer) >= self.part_size:
                    await send(bytes(buffer[: self.part_size]))
                    del buffer[: self.part_size]
            if buffer or not parts:
                await send(bytes(buffer))
            await self._call(
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as exc:
            # Abort, so a refused or broken upload leaves no object and no stored parts.
            with anyio.CancelScope(shield=True):
                try:
                    await self._call(
                        "abort_multipart_upload",
                        Bucket=self.bucket,
                        Key=full_key,
                        UploadId=upload_id,
                    )
                except Exception as abort_error:
                    # The caller needs the upload's own error (a 413 stays a 413); the parts
                    # left behind are what a bucket lifecycle rule for incomplete multipart
                    # uploads is for.
                    exc.add_note(f"aborting the multipart upload failed too: {abort_error!r}")
            timer.done(status="error")
            raise
        timer.done(written)
        return written

    async def read(self, key: str) -> AsyncIterator[bytes]:
        timer = _Timed("download")
        response = await self._call("get_object", Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]
        total = 0
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, READ_CHUNK):
                total += len(chunk)
                yield chunk
        finally:
            body.close()
        timer.done(total)

    async def download_to(self, key: str, path: Path) -> int:
        timer = _Timed("download")
        await anyio.to_thread.run_sync(
            lambda: self._client.download_file(self.bucket, self._key(key), str(path))
        )
        size = (await anyio.Path(path).stat()).st_size
        timer.done(size)
        return size

    async def delete(self, key: str) -> None:
        timer = _Timed("delete")
        await self._call("delete_object", Bucket=self.bucket, Key=self._key(key))
        timer.done()

    async def delete_prefix(self, prefix: str) -> Purged:
        """Abort the multipart uploads in progress under ``prefix``, then delete its objects,
        a listing page (up to 1000 keys) per DeleteObjects call. Safe to repeat: what is
        already gone is skipped. In a versioned bucket this leaves delete markers; the older
        versions go with the bucket's noncurrent-version lifecycle rule."""
        timer = _Timed("delete")
        try:
            full = f"{self._key(_check_prefix(prefix).rstrip('/'))}/"
            # Uploads first: one completing while its objects are deleted would otherwise
            # leave an object behind.
            aborted = await self._abort_uploads(full)
            deleted = await self._delete_objects(full)
        except BaseException:
            timer.done(status="error")
            raise
        timer.done()
        return Purged(objects=deleted, uploads_aborted=aborted)

    async def _abort_uploads(self, full_prefix: str) -> int:
        from botocore.exceptions import ClientError

        aborted = 0
        markers: dict[str, str] = {}
        while True:
            page = await self._call(
                "list_multipart_uploads", Bucket=self.bucket, Prefix=full_prefix, **markers
            )
            for upload in page.get("Uploads", []):
                try:
                    await self._call(
                        "abort_multipart_upload",
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                except ClientError as exc:
                    # Completed or aborted since the listing: nothing left to abort.
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
                else:
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            markers = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    async def _delete_objects(self, full_prefix: str) -> int:
        deleted = 0
        token: dict[str, str] = {}
        while True:
            page = await self._call(
                "list_objects_v2",
                Bucket=self.bucket,
                Prefix=full_prefix,
                MaxKeys=S3_BATCH,
                **token,
            )
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                result = await self._call(
                    "delete_objects",
                    Bucket=self.bucket,
                    Delete={"Objects": keys, "Quiet": True},
                )
                # DeleteObjects answers 200 even when some keys failed: they are in Errors.
                if errors := result.get("Errors"):
                    first = errors[0]
                    raise RuntimeError(
                        f"S3 refused to delete {len(errors)} of {len(keys)} objects under "
                        f"{full_prefix!r}, e.g. {first.get('Key')!r}: {first.get('Code')} "
                        f"{first.get('Message')}"
                    )
                deleted += len(keys)
            if not page.get("IsTruncated"):
                return deleted
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def copy(self, source: str, target: str) -> None:
        """A server-side copy (no bytes through us), with the tags dropped: a staged upload's
        ``record-staging`` tag must not follow it, or the lifecycle rule would expire it."""
        timer = _Timed("copy")
        await self._call(
            "copy_object",
            Bucket=self.bucket,
            Key=self._key(target),
            CopySource={"Bucket": self.bucket, "Key": self._key(source)},
            MetadataDirective="COPY",
            TaggingDirective="REPLACE",
            **self._sse_params(),
        )
        timer.done()

    async def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = await self._call("head_object", Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head["ContentLength"])

    async def exists(self, key: str) -> bool:
        return await self.size(key) is not None

    async def head(self, key: str, length: int) -> bytes:
        response = await self._call(
            "get_object", Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{length - 1}"
        )
        body = response["Body"]
        try:
            return bytes(await anyio.to_thread.run_sync(body.read))
        finally:
            body.close()

    async def presigned_get(self, key: str, *, expires_in: int = 900) -> str | None:
        return str(
            await anyio.to_thread.run_sync(
                lambda: self._client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self._key(key)},
                    ExpiresIn=expires_in,
                )
            )
        )

    async def presigned_put(
        self,
        key: str,
        *,
        content_type: str,
        expires_in: int = 900,
        content_length: int | None = None,
        tagging: str | None = None,
    ) -> PresignedUpload | None:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "ContentType": content_type,
            **self._sse_params(),
        }
        if content_length is not None:
            # Signed, so S3 itself refuses a body of any other size (a presigned PUT has no
            # content-length-range). Browsers and HTTP clients send Content-Length on their own.
            params["ContentLength"] = content_length
        headers = {"Content-Type": content_type, **self._sse_headers()}
        if tagging:
            # Signed too: the uploader must send exactly these tags.
            params["Tagging"] = tagging
            headers["x-amz-tagging"] = tagging
        url = await anyio.to_thread.run_sync(
            lambda: self._client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_in
            )
        )
        return PresignedUpload(
            url=str(url),
            method="PUT",
            headers=headers,
            expires_in=expires_in,
        )


def create_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "s3":
        if not settings.s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        return S3Store(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            region=settings.aws_region,
            endpoint_url=settings.s3_endpoint_url,
            sse=settings.s3_sse or None,
            kms_key_id=settings.s3_kms_key_id,
        )
    return FileStore(settings.state_dir / "objects")
