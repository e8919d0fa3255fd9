"""Deleting an org deletes what it left outside PostgreSQL: its objects (file store and S3,
uploads in progress included) and its Valkey keys, through jobs run by procrastinate's worker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql

from app.jobs.queue import PURGE_ORG_TASK
from app.kit.storage import MIN_PART_SIZE, FileStore, S3Store, staging_key
from tests.app.conftest import Tenant
from tests.app.kit.test_storage import REGION, MotoS3, bucket, moto_s3  # noqa: F401 - fixtures
from tests.worker.test_pipeline import run_jobs, upload
from worker.pipeline import PipelineDeps
from worker.purge import OrgStillExists, purge_org


@pytest.fixture
def upload_settings(app: Any, worker_settings: Any) -> Any:
    app.state.services.settings = worker_settings
    return worker_settings


async def one_byte() -> Any:
    yield b"x"


def files_of(root: Path, org_id: str) -> list[Path]:
    folders = (root / "org" / org_id, root / "staging" / "org" / org_id)
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()]


def rows_of(url: str, org_id: str) -> dict[str, int]:
    """The org's rows in every table with an ``org_id`` column (and its ``orgs`` row)."""
    with psycopg.connect(url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'org_id'"
            )
        ]
        counts = {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE org_id = %s").format(sql.Identifier(table)),
                (org_id,),
            ).fetchone()[0]  # type: ignore[index]
            for table in tables
        }
        counts["orgs"] = conn.execute(
            "SELECT count(*) FROM orgs WHERE id = %s", (org_id,)
        ).fetchone()[0]  # type: ignore[index]
    return counts


async def keys_naming(deps: PipelineDeps, org_id: str) -> list[bytes]:
    return [key async for key in deps.redis.scan_iter(match=f"*{org_id}*")]


def purge_jobs(url: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(status, args, due now) of every purge job."""
    with psycopg.connect(url) as conn:
        return [
            (status, args, due)
            for status, args, due in conn.execute(
                "SELECT status::text, args, coalesce(scheduled_at <= now(), true) "
                "FROM procrastinate_jobs WHERE task_name = %s ORDER BY id",
                (PURGE_ORG_TASK,),
            )
        ]


async def test_deleting_an_org_deletes_its_files_and_cached_values(
    client: Any, deps: PipelineDeps, upload_settings: Any, org_a: Tenant, org_b: Tenant
) -> None:
    for tenant in (org_a, org_b):
        await upload(client, tenant)
        # A direct upload never completed (the file store has none, but the prefix is purged).
        key = staging_key(UUID(tenant.org_id), uuid4(), "wav")
        await deps.store.write(key, one_byte(), content_type="audio/wav")
    await run_jobs(upload_settings)  # the pipelines: transcripts, chunks, cached values
    assert isinstance(deps.store, FileStore)
    root = deps.store.root
    assert len(files_of(root, org_a.org_id)) == 2
    assert await keys_naming(deps, org_a.org_id)  # e.g. its embeddings and search version
    b_files = files_of(root, org_b.org_id)
    b_keys = sorted(await keys_naming(deps, org_b.org_id))
    assert len(b_files) == 2
    assert b_keys

    response = await client.delete(f"/api/orgs/{org_a.org_id}", headers=org_a.auth())
    assert response.status_code == 204
    assert set(rows_of(upload_settings.database_url, org_a.org_id).values()) == {0}
    await run_jobs(upload_settings)

    assert files_of(root, org_a.org_id) == []
    assert not (root / "org" / org_a.org_id).exists()
    assert await keys_naming(deps, org_a.org_id) == []
    assert set(rows_of(upload_settings.database_url, org_a.org_id).values()) == {0}
    # Org B keeps everything.
    assert files_of(root, org_b.org_id) == b_files
    assert sorted(await keys_naming(deps, org_b.org_id)) == b_keys
    assert rows_of(upload_settings.database_url, org_b.org_id)["recordings"] == 1


class CountingClient:
    """boto3's client, with the keys of every DeleteObjects call written down."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.delete_batches: list[int] = []

    def delete_objects(self, **kwargs: Any) -> Any:
        self.delete_batches.append(len(kwargs["Delete"]["Objects"]))
        return self.client.delete_objects(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def put_many(s3: Any, name: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=name, Key=key, Body=b"x"), keys))


def all_keys(s3: Any, name: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def pending(s3: Any, name: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=name).get("Uploads", [])]


async def test_s3_pages_through_more_than_a_thousand_objects_and_aborts_uploads(
    client: Any,
    deps: PipelineDeps,
    upload_settings: Any,
    org_a: Tenant,
    org_b: Tenant,
    moto_s3: MotoS3,  # noqa: F811
    bucket: str,  # noqa: F811
) -> None:
    s3 = moto_s3.client()
    counting = CountingClient(moto_s3.client())
    store = S3Store(
        bucket=bucket,
        prefix="stack",
        region=REGION,
        endpoint_url=moto_s3.endpoint_url,
        client_factory=lambda: counting,
    )
    deps.store = store
    a, b = org_a.org_id, org_b.org_id
    a_keys = [f"stack/org/{a}/recordings/{i:05d}/original.wav" for i in range(1203)]
    a_keys += [f"stack/staging/org/{a}/recordings/{i:05d}/original.wav" for i in range(3)]
    kept = [
        f"stack/org/{b}/recordings/00001/original.wav",
        f"stack/staging/org/{b}/recordings/00001/original.wav",
        # Another stack's objects in the same bucket, even under the same org path.
        f"other/org/{a}/recordings/00001/original.wav",
    ]
    put_many(s3, bucket, a_keys + kept)
    for key in (f"stack/org/{a}/recordings/late/original.wav", f"stack/org/{b}/recordings/x/y"):
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * MIN_PART_SIZE
        )

    response = await client.delete(f"/api/orgs/{a}", headers=org_a.auth())
    assert response.status_code == 204
    await run_jobs(upload_settings)

    assert sorted(all_keys(s3, bucket)) == sorted(kept)
    assert pending(s3, bucket) == [f"stack/org/{b}/recordings/x/y"]
    assert max(counting.delete_batches) <= 1000
    assert sum(counting.delete_batches) == len(a_keys)
    assert len(counting.delete_batches) >= 2  # the recordings' 1203 keys took two pages
    assert [status for status, _, _ in purge_jobs(upload_settings.database_url)] == [
        "succeeded",
        "todo",
    ]


async def test_the_purge_is_safe_to_run_twice(
    client: Any, deps: PipelineDeps, upload_settings: Any, org_a: Tenant
) -> None:
    await upload(client, org_a)
    await run_jobs(upload_settings)
    response = await client.delete(f"/api/orgs/{org_a.org_id}", headers=org_a.auth())
    assert response.status_code == 204
    url = upload_settings.database_url
    jobs = purge_jobs(url)
    # Two passes, now and later; their arguments name the org and nothing else.
    assert jobs == [
        ("todo", {"org_id": org_a.org_id}, True),
        ("todo", {"org_id": org_a.org_id}, False),
    ]
    await run_jobs(upload_settings)
    assert [status for status, _, _ in purge_jobs(url)] == ["succeeded", "todo"]

    # The second pass, made due now, finds nothing left and succeeds all the same.
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE task_name = %s "
            "AND status = 'todo'",
            (PURGE_ORG_TASK,),
        )
    await run_jobs(upload_settings)
    assert [status for status, _, _ in purge_jobs(url)] == ["succeeded", "succeeded"]
    purged = await purge_org(deps, UUID(org_a.org_id))
    assert (purged.objects, purged.uploads_aborted, purged.cache_keys) == (0, 0, 0)
    assert isinstance(deps.store, FileStore)
    assert files_of(deps.store.root, org_a.org_id) == []


async def test_an_org_that_still_exists_is_not_purged(
    client: Any, deps: PipelineDeps, upload_settings: Any, org_a: Tenant
) -> None:
    await upload(client, org_a)
    assert isinstance(deps.store, FileStore)
    with pytest.raises(OrgStillExists):
        await purge_org(deps, UUID(org_a.org_id))
    assert len(files_of(deps.store.root, org_a.org_id)) == 1


@pytest.mark.parametrize("prefix", ["", "/", "org/", "org", "org/x", "../org/x/", "org/../x/"])
async def test_only_a_folder_below_a_namespace_is_deleted(tmp_path: Path, prefix: str) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(ValueError, match=r"prefix|key"):
        await store.delete_prefix(prefix)
