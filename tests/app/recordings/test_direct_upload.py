"""Recordings on the S3 backend (moto's S3 server): the streaming upload, and direct uploads
(presigned PUT from the client, then ``complete``)."""

# ruff: noqa: F811 - pytest passes the imported `moto_s3` fixture by parameter name

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
import redis

from app.kit.storage import FileStore
from tests.app.conftest import Tenant
from tests.app.kit.test_storage import MotoS3, moto_s3  # noqa: F401 - the shared moto server
from tests.app.recordings.test_upload import counts, upload, wav_bytes


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> str:
    return moto_s3.new_bucket()


@pytest.fixture
def settings(settings: Any, moto_s3: MotoS3, s3_bucket: str) -> Any:
    # The app builds its own S3Store from these, exactly as in production.
    return settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_bucket": s3_bucket,
            "s3_endpoint_url": moto_s3.endpoint_url,
            "aws_region": "us-east-1",
            # Many uploads per org in one test; the upload limit has its own tests.
            "ratelimit_upload": "1000/60",
        }
    )


def media_key(org_id: str, recording_id: str, ext: str = "wav") -> str:
    return f"org/{org_id}/recordings/{recording_id}/original.{ext}"


def pending_uploads(settings: Any) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return sorted(client.scan_iter("upload:*"))
    finally:
        client.close()


async def start(
    client: httpx.AsyncClient, tenant: Tenant, *, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return await client.post("/api/recordings/uploads", json=body, headers=headers or tenant.auth())


async def put(started: dict[str, Any], content: bytes) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.request(
            started["method"], started["url"], content=content, headers=started["headers"]
        )


async def complete(client: httpx.AsyncClient, tenant: Tenant, upload_id: str) -> httpx.Response:
    return await client.post(f"/api/recordings/uploads/{upload_id}/complete", headers=tenant.auth())


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["request_id"]
    return body


# --- the streaming upload, stored in S3 -------------------------------------------------------


async def test_streaming_upload_to_s3_then_media_and_delete(
    client, settings, moto_s3: MotoS3, org_a: Tenant, org_b: Tenant
):
    content = wav_bytes(1.0)
    response = await upload(client, org_a, content, "standup.wav")
    assert response.status_code == 202, response.text
    recording = response.json()["recording"]
    key = media_key(org_a.org_id, recording["id"])
    assert moto_s3.keys(settings.s3_bucket) == [key]
    s3 = moto_s3.client()
    stored = s3.get_object(Bucket=settings.s3_bucket, Key=key)
    assert stored["Body"].read() == content
    assert stored["ContentType"] == "audio/wav"
    assert stored["ServerSideEncryption"] == "aws:kms"

    media = await client.get(f"/api/recordings/{recording['id']}/media", headers=org_a.auth())
    assert media.status_code == 307
    url = media.headers["location"]
    assert url.startswith(f"{moto_s3.endpoint_url}/{settings.s3_bucket}/{key}?")
    async with httpx.AsyncClient() as http:
        fetched = await http.get(url)
    assert fetched.status_code == 200
    assert fetched.content == content
    other = await client.get(f"/api/recordings/{recording['id']}/media", headers=org_b.auth())
    assert_problem(other, 404)
    assert_problem(
        await client.delete(f"/api/recordings/{recording['id']}", headers=org_b.auth()), 404
    )
    assert moto_s3.keys(settings.s3_bucket) == [key]

    deleted = await client.delete(f"/api/recordings/{recording['id']}", headers=org_a.auth())
    assert deleted.status_code == 204
    assert moto_s3.keys(settings.s3_bucket) == []


@pytest.mark.parametrize(
    ("content", "filename", "status"),
    [
        (b"just some text, not a video at all\n" * 10, "x.webm", 415),
        (wav_bytes(0.2), "meeting.webm", 415),
    ],
)
async def test_refused_streaming_upload_leaves_nothing_in_s3(
    client, settings, moto_s3: MotoS3, org_a: Tenant, content, filename, status
):
    response = await upload(client, org_a, content, filename)
    assert_problem(response, status)
    assert counts(settings) == (0, 0)
    assert moto_s3.keys(settings.s3_bucket) == []
    assert moto_s3.pending_uploads(settings.s3_bucket) == []


async def test_oversized_streaming_upload_aborts_the_multipart_upload(
    app, client, settings, moto_s3: MotoS3, org_a: Tenant
):
    services = app.state.services
    services.settings = services.settings.model_copy(update={"upload_max_bytes": 10_000})
    # The type is known after 4 KiB, so the S3 multipart upload has started when the limit
    # trips: it must be aborted, not left as stored parts.
    response = await upload(client, org_a, wav_bytes(2.0), "long.wav")
    assert_problem(response, 413)
    assert counts(settings) == (0, 0)
    assert moto_s3.keys(settings.s3_bucket) == []
    assert moto_s3.pending_uploads(settings.s3_bucket) == []


# --- direct uploads ----------------------------------------------------------------------------


async def test_direct_upload_end_to_end_for_two_orgs(
    client, settings, moto_s3: MotoS3, org_a: Tenant, org_b: Tenant
):
    content = wav_bytes(1.0)
    response = await start(
        client, org_a, filename="Board meeting.wav", size=len(content), content_type="audio/x-wav"
    )
    assert response.status_code == 201, response.text
    started = response.json()
    assert started["method"] == "PUT"
    assert started["expires_in"] == 900
    assert started["headers"] == {
        "Content-Type": "audio/wav",  # from the name, not the client's content_type
        "x-amz-server-side-encryption": "aws:kms",
        # Until `complete`, the object is staged and tagged for the lifecycle rule.
        "x-amz-tagging": "record-staging=1",
    }
    key = media_key(org_a.org_id, started["recording_id"])
    staged = f"staging/{key}"
    assert f"/{settings.s3_bucket}/{staged}?" in started["url"]
    ttl = redis.Redis.from_url(settings.redis_url).ttl(f"upload:{started['upload_id']}")
    assert 900 < ttl <= 900 + 3600
    assert counts(settings) == (0, 0), "nothing is written before the file is there"

    put_response = await put(started, content)
    assert put_response.status_code == 200, put_response.text
    assert moto_s3.keys(settings.s3_bucket) == [staged]
    s3 = moto_s3.client()
    tags = s3.get_object_tagging(Bucket=settings.s3_bucket, Key=staged)["TagSet"]
    assert tags == [{"Key": "record-staging", "Value": "1"}]

    # Another org cannot complete (or even see) it, and trying does not spend it.
    assert_problem(await complete(client, org_b, started["upload_id"]), 404)

    done = await complete(client, org_a, started["upload_id"])
    assert done.status_code == 202, done.text
    # Moved to the recording's key, untagged (the lifecycle rule must not expire it).
    assert moto_s3.keys(settings.s3_bucket) == [key]
    assert s3.get_object_tagging(Bucket=settings.s3_bucket, Key=key)["TagSet"] == []
    assert s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read() == content
    body = done.json()
    recording = body["recording"]
    assert recording["id"] == started["recording_id"]
    assert recording["title"] == "Board meeting"
    assert recording["status"] == "uploaded"
    assert recording["content_type"] == "audio/wav"
    assert recording["size_bytes"] == len(content)
    assert recording["created_by"] == org_a.user_id
    assert counts(settings) == (1, 1)
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT r.media_key, r.job_id, j.task_name, j.args FROM recordings r "
            "JOIN procrastinate_jobs j ON j.id = r.job_id WHERE r.id = %s",
            (recording["id"],),
        ).fetchone()
    assert row == (
        key,
        body["job_id"],
        "record.process_recording",
        {"org_id": org_a.org_id, "recording_id": recording["id"]},
    )

    again = assert_problem(await complete(client, org_a, started["upload_id"]), 409)
    assert recording["id"] in again["detail"]
    assert counts(settings) == (1, 1)

    job = await client.get(f"/api/jobs/{body['job_id']}", headers=org_a.auth())
    assert job.status_code == 200
    assert job.json()["recording_id"] == recording["id"]
    assert_problem(await client.get(f"/api/jobs/{body['job_id']}", headers=org_b.auth()), 404)
    media = await client.get(f"/api/recordings/{recording['id']}/media", headers=org_a.auth())
    assert media.status_code == 307
    async with httpx.AsyncClient() as http:
        assert (await http.get(media.headers["location"])).content == content
    listing = await client.get("/api/recordings", headers=org_b.auth())
    assert listing.json()["items"] == []


async def test_direct_upload_of_a_refused_file_is_deleted(
    client, settings, moto_s3: MotoS3, org_a: Tenant
):
    content = b"just some text, not a video at all\n" * 10
    started = (await start(client, org_a, filename="x.webm", size=len(content))).json()
    assert (await put(started, content)).status_code == 200

    body = assert_problem(await complete(client, org_a, started["upload_id"]), 415)
    assert "not a recognised audio or video format" in body["detail"]
    assert moto_s3.keys(settings.s3_bucket) == []
    assert counts(settings) == (0, 0)
    # The upload is spent: a retry is told to start again.
    assert_problem(await complete(client, org_a, started["upload_id"]), 404)
    assert pending_uploads(settings) == []


async def test_direct_upload_with_a_size_other_than_declared_is_deleted(
    client, settings, moto_s3: MotoS3, org_a: Tenant
):
    content = wav_bytes(0.5)
    started = (await start(client, org_a, filename="a.wav", size=len(content) + 100)).json()
    # moto checks no signature; real S3 would refuse this PUT (the length is signed).
    assert (await put(started, content)).status_code == 200
    body = assert_problem(await complete(client, org_a, started["upload_id"]), 400)
    assert "declared" in body["detail"]
    assert moto_s3.keys(settings.s3_bucket) == []
    assert counts(settings) == (0, 0)


async def test_a_file_swapped_after_upload_is_checked_as_stored(
    app, client, settings, moto_s3: MotoS3, org_a: Tenant
):
    """The upload URL stays valid after the first PUT: whatever the staged object holds when
    the server copies it is what gets checked, not what was there a moment before."""
    from app.recordings.service import storage_of

    content = wav_bytes(0.5)
    started = (await start(client, org_a, filename="a.wav", size=len(content))).json()
    assert (await put(started, content)).status_code == 200
    store = storage_of(app.state.services)
    real_copy = store.copy

    async def swapped_then_copied(source: str, target: str) -> None:
        junk = b"#!/bin/sh\necho pwned\n".ljust(len(content), b" ")
        assert (await put(started, junk)).status_code == 200  # same size, other bytes
        await real_copy(source, target)

    store.copy = swapped_then_copied
    try:
        assert_problem(await complete(client, org_a, started["upload_id"]), 415)
    finally:
        store.copy = real_copy
    assert moto_s3.keys(settings.s3_bucket) == []
    assert counts(settings) == (0, 0)


async def test_complete_before_the_file_is_there_can_be_retried(
    client, settings, moto_s3: MotoS3, org_a: Tenant
):
    content = wav_bytes(0.3)
    started = (await start(client, org_a, filename="a.wav", size=len(content))).json()
    body = assert_problem(await complete(client, org_a, started["upload_id"]), 409)
    assert "not been uploaded yet" in body["detail"]
    assert counts(settings) == (0, 0)

    assert (await put(started, content)).status_code == 200
    done = await complete(client, org_a, started["upload_id"])
    assert done.status_code == 202, done.text
    assert counts(settings) == (1, 1)


async def test_unknown_upload_ids_are_404(client, settings, org_a: Tenant):
    unknown = "0b6c1b8e-0000-4000-8000-000000000009"
    assert_problem(await complete(client, org_a, unknown), 404)
    assert_problem(
        await client.post("/api/recordings/uploads/not-a-uuid/complete", headers=org_a.auth()),
        400,
    )


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"filename": "../../etc/x.wav", "size": 10}, 400, "plain name"),
        ({"filename": "a\\b.wav", "size": 10}, 400, "plain name"),
        ({"filename": "notes.txt", "size": 10}, 415, "not accepted"),
        ({"filename": "noextension", "size": 10}, 415, "not accepted"),
        ({"filename": "a.wav", "size": 0}, 400, "errors"),
        ({"filename": "a.wav", "size": -5}, 400, "errors"),
        ({"filename": "a.wav"}, 400, "errors"),
        ({"filename": "", "size": 10}, 400, "errors"),
        ({"filename": "a.wav", "size": 10, "bucket": "other"}, 400, "errors"),
        ({"filename": "a.wav", "size": 3 * 1024**3}, 413, "limit"),
    ],
)
async def test_bad_direct_upload_requests_change_nothing(
    client, settings, moto_s3: MotoS3, org_a: Tenant, body, status, says
):
    response = await client.post("/api/recordings/uploads", json=body, headers=org_a.auth())
    problem = assert_problem(response, status)
    assert says in problem["detail"] or says in problem
    assert pending_uploads(settings) == []
    assert moto_s3.keys(settings.s3_bucket) == []


async def test_direct_upload_needs_create_permission(
    client, settings, moto_s3: MotoS3, org_a: Tenant
):
    reader = org_a.auth(await org_a.key("reader"))
    response = await start(client, org_a, headers=reader, filename="a.wav", size=10)
    assert_problem(response, 403)
    started = (await start(client, org_a, filename="a.wav", size=10)).json()
    response = await client.post(
        f"/api/recordings/uploads/{started['upload_id']}/complete", headers=reader
    )
    assert_problem(response, 403)
    assert_problem(await client.post("/api/recordings/uploads", json={}), 401)
    assert len(pending_uploads(settings)) == 1


async def test_a_contributor_completes_only_its_own_uploads(
    client, settings, moto_s3: MotoS3, org_a: Tenant
):
    _, first_session = await org_a.member("contributor")
    _, second_session = await org_a.member("contributor")
    first = {"Authorization": f"Bearer {first_session}", "X-Record-Org": org_a.org_id}
    second = {"Authorization": f"Bearer {second_session}", "X-Record-Org": org_a.org_id}
    content = wav_bytes(0.3)
    started = await start(client, org_a, headers=first, filename="a.wav", size=len(content))
    started = started.json()
    assert (await put(started, content)).status_code == 200
    path = f"/api/recordings/uploads/{started['upload_id']}/complete"
    assert_problem(await client.post(path, headers=second), 403)
    assert counts(settings) == (0, 0)
    done = await client.post(path, headers=first)  # the uploader still can: nothing was spent
    assert done.status_code == 202, done.text
    assert counts(settings) == (1, 1)


async def test_direct_upload_on_the_file_backend_says_use_multipart(
    app, client, settings, tmp_path, org_a: Tenant
):
    app.state.services.extras["storage"] = FileStore(tmp_path / "objects")
    response = await start(client, org_a, filename="a.wav", size=100)
    body = assert_problem(response, 409)
    assert "S3" in body["detail"]
    assert "POST /api/recordings" in body["detail"]
    assert pending_uploads(settings) == []


async def test_failed_complete_leaves_only_the_staged_upload_and_can_be_retried(
    client, settings, moto_s3: MotoS3, org_a: Tenant, monkeypatch
):
    from app.recordings import direct

    content = wav_bytes(0.3)
    started = (await start(client, org_a, filename="a.wav", size=len(content))).json()
    assert (await put(started, content)).status_code == 200
    staged = f"staging/{media_key(org_a.org_id, started['recording_id'])}"
    real_accept = direct.accept_recording

    async def database_down(*args, **kwargs):
        raise direct.ServiceUnavailableError("database restarting")

    monkeypatch.setattr(direct, "accept_recording", database_down)
    assert_problem(await complete(client, org_a, started["upload_id"]), 503)
    # The copy made before the failure is gone; the staged upload waits for a retry.
    assert moto_s3.keys(settings.s3_bucket) == [staged]
    assert counts(settings) == (0, 0)

    monkeypatch.setattr(direct, "accept_recording", real_accept)
    done = await complete(client, org_a, started["upload_id"])
    assert done.status_code == 202, done.text
    assert moto_s3.keys(settings.s3_bucket) == [media_key(org_a.org_id, started["recording_id"])]


async def test_direct_uploads_stop_at_what_one_s3_copy_can_move(
    app, client, moto_s3: MotoS3, org_a: Tenant
):
    # Even with a larger configured cap, `complete` moves the object with one CopyObject (S3
    # allows 5 GiB), so a larger direct upload is refused up front.
    services = app.state.services
    services.settings = services.settings.model_copy(update={"upload_max_bytes": 8 * 1024**3})
    response = await client.post(
        "/api/recordings/uploads",
        json={"filename": "a.wav", "size": 6 * 1024**3},
        headers=org_a.auth(),
    )
    assert_problem(response, 413)
    ok = await client.post(
        "/api/recordings/uploads",
        json={"filename": "a.wav", "size": 4 * 1024**3},
        headers=org_a.auth(),
    )
    assert ok.status_code == 201, ok.text
