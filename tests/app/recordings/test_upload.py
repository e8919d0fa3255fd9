"""Uploads: streamed to storage, checked by magic bytes and name, all-or-nothing."""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path

import psycopg
import pytest

from tests.app.conftest import Tenant


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
            for i in range(int(seconds * rate))
        )
        out.writeframes(frames)
    return buffer.getvalue()


def objects_under(settings) -> list[Path]:
    root = settings.state_dir / "objects"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def counts(settings) -> tuple[int, int]:
    with psycopg.connect(settings.database_url) as conn:
        recordings = conn.execute("SELECT count(*) FROM recordings").fetchone()[0]
        # The pipeline's jobs (signup queues mail jobs of its own).
        jobs = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'pipeline'"
        ).fetchone()[0]
    return recordings, jobs


async def upload(
    client, tenant: Tenant, content: bytes, filename: str, title: str | None = "T", headers=None
):
    data = {"title": title} if title is not None else {}
    return await client.post(
        "/api/recordings",
        files={"file": (filename, content, "application/octet-stream")},
        data=data,
        headers=headers or tenant.auth(),
    )


async def test_upload_streams_to_storage_and_queues_one_job(
    client, settings, org_a: Tenant, org_b: Tenant
):
    content = wav_bytes(1.0)
    response = await upload(client, org_a, content, "standup.wav", title="<i>Stand-up</i>")
    assert response.status_code == 202, response.text
    body = response.json()
    recording = body["recording"]
    assert recording["status"] == "uploaded"
    assert recording["title"] == "<i>Stand-up</i>"  # plain text, stored as given
    assert recording["content_type"] == "audio/wav"
    assert recording["size_bytes"] == len(content)
    [stored] = objects_under(settings)
    assert stored.read_bytes() == content
    assert f"org/{org_a.org_id}/recordings/{recording['id']}/original.wav" in str(stored)
    with psycopg.connect(settings.database_url) as conn:
        job = conn.execute(
            "SELECT task_name, queueing_lock, args, status FROM procrastinate_jobs WHERE id = %s",
            (body["job_id"],),
        ).fetchone()
    assert job[0] == "record.process_recording"
    assert job[1] == f"recording:{recording['id']}"
    assert job[2] == {"org_id": org_a.org_id, "recording_id": recording["id"]}
    assert job[3] == "todo"

    job_view = await client.get(f"/api/jobs/{body['job_id']}", headers=org_a.auth())
    assert job_view.status_code == 200
    assert job_view.json()["status"] == "todo"
    assert job_view.json()["recording_id"] == recording["id"]
    assert (
        await client.get(f"/api/jobs/{body['job_id']}", headers=org_b.auth())
    ).status_code == 404

    media = await client.get(f"/api/recordings/{recording['id']}/media", headers=org_a.auth())
    assert media.status_code == 200
    assert media.content == content
    assert media.headers["content-type"].startswith("audio/wav")
    other = await client.get(f"/api/recordings/{recording['id']}/media", headers=org_b.auth())
    assert other.status_code == 404

    deleted = await client.delete(f"/api/recordings/{recording['id']}", headers=org_a.auth())
    assert deleted.status_code == 204
    assert objects_under(settings) == []


@pytest.mark.parametrize(
    ("content", "filename", "status"),
    [
        (b"just some text, not a video at all\n" * 10, "x.webm", 415),
        (wav_bytes(0.2), "meeting.webm", 415),  # a WAV named .webm: bytes and name disagree
        (wav_bytes(0.2), "../../etc/x.wav", 400),
        (wav_bytes(0.2), "..\\\\x.wav", 400),
        (b"", "empty.wav", 400),
    ],
)
async def test_refused_uploads_leave_nothing(
    client, settings, org_a: Tenant, content, filename, status
):
    response = await upload(client, org_a, content, filename)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert counts(settings) == (0, 0)
    assert objects_under(settings) == []


async def test_oversized_upload_is_413_and_leaves_nothing(app, client, settings, org_a: Tenant):
    services = app.state.services
    services.settings = services.settings.model_copy(update={"upload_max_bytes": 10_000})
    response = await upload(client, org_a, wav_bytes(2.0), "long.wav")
    assert response.status_code == 413
    assert counts(settings) == (0, 0)
    assert objects_under(settings) == []


async def test_not_multipart_and_missing_file(client, settings, org_a: Tenant):
    response = await client.post("/api/recordings", json={"title": "x"}, headers=org_a.auth())
    assert response.status_code == 400
    response = await client.post(
        "/api/recordings",
        data={"title": "x"},
        files={"other": ("a.txt", b"x")},
        headers=org_a.auth(),
    )
    assert response.status_code == 400
    assert counts(settings) == (0, 0)


BOUNDARY = b"RecordTestBoundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}


def form_part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (
        BOUNDARY,
        disposition.encode(),
        value,
    )


CLOSE = b"--%s--\r\n" % BOUNDARY


async def test_a_body_cut_off_inside_the_file_is_refused(client, settings, org_a: Tenant):
    # No closing boundary: the client went away (or was cut off) mid-file.
    body = form_part("title", b"T") + form_part("file", wav_bytes(1.0), "a.wav")[:20_000]
    response = await client.post(
        "/api/recordings", content=body, headers={**org_a.auth(), **MULTIPART}
    )
    assert response.status_code == 400, response.text
    assert "cut off" in response.json()["detail"]
    assert counts(settings) == (0, 0)
    assert objects_under(settings) == []


async def test_a_whole_body_without_its_closing_boundary_is_refused(
    client, settings, org_a: Tenant
):
    body = form_part("title", b"T") + form_part("file", wav_bytes(0.3), "a.wav")
    response = await client.post(
        "/api/recordings", content=body, headers={**org_a.auth(), **MULTIPART}
    )
    assert response.status_code == 400, response.text
    assert counts(settings) == (0, 0)
    assert objects_under(settings) == []


async def test_chunked_bodies_are_held_to_the_cap_too(app, client, settings, org_a: Tenant):
    """Without a Content-Length, fields and an epilogue count against the cap as well."""
    services = app.state.services
    services.settings = services.settings.model_copy(update={"upload_max_bytes": 10_000})
    sent = 0

    async def body():
        nonlocal sent
        yield form_part("file", wav_bytes(0.1), "a.wav") + CLOSE
        for _ in range(100):  # an epilogue, 10 MB of it
            sent += 100_000
            yield b"z" * 100_000

    response = await client.post(
        "/api/recordings", content=body(), headers={**org_a.auth(), **MULTIPART}
    )
    assert response.status_code == 413, response.text
    assert sent < 1_000_000  # refused early, not after reading it all
    assert counts(settings) == (0, 0)
    assert objects_under(settings) == []


async def test_a_form_with_many_fields_is_refused(client, settings, org_a: Tenant):
    fields = b"".join(form_part(f"f{n}", b"x") for n in range(20))
    body = fields + form_part("file", wav_bytes(0.1), "a.wav") + CLOSE
    response = await client.post(
        "/api/recordings", content=body, headers={**org_a.auth(), **MULTIPART}
    )
    assert response.status_code == 400, response.text
    assert "more than" in response.json()["detail"]
    assert counts(settings) == (0, 0)


async def test_an_over_long_boundary_is_a_400_not_a_500(client, settings, org_a: Tenant):
    headers = {**org_a.auth(), "content-type": "multipart/form-data; boundary=" + "a" * 300}
    response = await client.post("/api/recordings", content=b"--" + b"a" * 300, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_only_the_streaming_upload_skips_the_body_limit(client, settings, org_a: Tenant):
    # A JSON route beside it is read whole (before authentication): the 1 MiB limit holds.
    big = b'{"filename": "a.wav", "size": 10, "title": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    for path in ("/api/recordings/uploads", "/api/recordings/uploads/x/complete"):
        response = await client.post(
            path, content=big, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, (path, response.text)


async def test_reader_cannot_upload(client, settings, org_a: Tenant):
    reader = org_a.auth(await org_a.key("reader"))
    response = await upload(client, org_a, wav_bytes(0.2), "a.wav", headers=reader)
    assert response.status_code == 403
    assert counts(settings) == (0, 0)


async def test_title_defaults_to_file_name(client, org_a: Tenant):
    response = await upload(client, org_a, wav_bytes(0.2), "Quarterly review.wav", title=None)
    assert response.status_code == 202
    assert response.json()["recording"]["title"] == "Quarterly review"


async def test_media_whose_file_is_gone_is_a_404_not_a_500(client, settings, org_a: Tenant):
    response = await upload(client, org_a, wav_bytes(0.5), "m.wav")
    rid = response.json()["recording"]["id"]
    path = f"/api/recordings/{rid}/media"
    assert (await client.get(path, headers=org_a.auth())).status_code == 200
    for stored in objects_under(settings):
        stored.unlink()
    response = await client.get(path, headers=org_a.auth())
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
