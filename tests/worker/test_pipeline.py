"""The pipeline through procrastinate's real worker, on real PostgreSQL/Valkey/storage."""

from __future__ import annotations

import io
import uuid
import wave

import numpy as np
import psycopg
import pytest

from tests.app.conftest import Tenant
from tests.app.recordings.test_upload import wav_bytes
from tests.conftest import ROLES, as_login
from tests.worker.conftest import OPENAI_MAX_UPLOAD, SENTENCES
from worker.jobs import build_app, sweep
from worker.pipeline import process_recording


@pytest.fixture
def upload_settings(app, worker_settings):
    app.state.services.settings = worker_settings
    return worker_settings


async def upload(client, tenant: Tenant, content: bytes | None = None, name: str = "m.wav"):
    response = await client.post(
        "/api/recordings",
        files={"file": (name, content or wav_bytes(1.0))},
        data={"title": "Planning"},
        headers=tenant.auth(),
    )
    assert response.status_code == 202, response.text
    return response.json()


async def run_jobs(settings) -> None:
    """Run procrastinate's worker until the queue is empty (wait=False), as the worker's role."""
    app = build_app(as_login(settings, ROLES.worker))
    async with app.open_async():
        await app.run_worker_async(
            wait=False, install_signal_handlers=False, concurrency=1, listen_notify=False
        )


def db_counts(url: str, recording_id: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE recording_id = %s", (recording_id,)
            ).fetchone()[0]
            for table in ("transcripts", "transcript_chunks", "documents")
        }


async def test_upload_to_ready(
    client, deps, upload_settings, org_a: Tenant, org_b: Tenant, fake_openai
):
    accepted = await upload(client, org_a)
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)

    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "ready", recording
    assert recording["error"] is None
    assert recording["duration_seconds"] == pytest.approx(1.0, abs=0.05)
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert job["status"] == "succeeded"
    assert job["started_at"]
    assert job["finished_at"]

    transcript = await client.get(f"/api/recordings/{rid}/transcript", headers=org_a.auth())
    assert transcript.status_code == 200
    assert [s["text"] for s in transcript.json()["segments"]] == SENTENCES
    assert transcript.json()["language"] == "en"
    document = (await client.get(f"/api/recordings/{rid}/document", headers=org_a.auth())).json()
    assert document["title"] == "Quarterly planning"
    assert document["action_items"] == [SENTENCES[2]]
    for suffix in ("transcript", "document"):
        other = await client.get(f"/api/recordings/{rid}/{suffix}", headers=org_b.auth())
        assert other.status_code == 404

    with psycopg.connect(upload_settings.database_url) as conn:
        chunks = conn.execute(
            "SELECT idx, text, start_seconds, end_seconds, embedding IS NOT NULL, org_id::text "
            "FROM transcript_chunks WHERE recording_id = %s ORDER BY idx",
            (rid,),
        ).fetchall()
    assert chunks
    assert all(c[4] for c in chunks)
    assert all(c[5] == org_a.org_id for c in chunks)
    assert chunks[0][2] == 0.0
    assert chunks[-1][3] == pytest.approx(7.8)
    joined = " ".join(c[1] for c in chunks)
    assert all(sentence in joined for sentence in SENTENCES)
    # The org's cached search answers were retired once its chunks were committed; not org B's.
    assert await deps.redis.get(f"search:{{{org_a.org_id}}}:gen") is not None
    assert await deps.redis.get(f"search:{{{org_b.org_id}}}:gen") is None
    # And the recording's cached transcript answer, once its transcript was saved.
    assert await deps.redis.get(f"transcript:{{{org_a.org_id}/{rid}}}:gen") is not None


def long_quiet_wav(seconds: float) -> bytes:
    """8 kHz 8-bit audio (small to upload) that decodes to more than OpenAI takes at once."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        samples = np.random.default_rng(0).integers(100, 156, int(seconds * 8000), dtype=np.uint8)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


async def test_a_meeting_longer_than_one_openai_upload_is_transcribed_in_pieces(
    client, deps, upload_settings, org_a: Tenant, fake_openai
):
    # 14 minutes decode to 26.9 MB of 16 kHz WAV: more than OpenAI's 25 MB in one request.
    accepted = await upload(client, org_a, long_quiet_wav(14 * 60), name="long.wav")
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)

    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "ready", recording
    assert recording["duration_seconds"] == pytest.approx(840, abs=0.1)
    assert len(fake_openai.upload_bytes) == 2  # 600 s pieces by default
    assert all(size <= OPENAI_MAX_UPLOAD for size in fake_openai.upload_bytes)
    transcript = await client.get(f"/api/recordings/{rid}/transcript", headers=org_a.auth())
    segments = transcript.json()["segments"]
    # Each piece answered the fake's four sentences; the second piece's are shifted by where
    # the cut fell (the last 20 s before 600 s), onto the recording's clock.
    assert [s["text"] for s in segments] == SENTENCES * 2
    starts = [s["start"] for s in segments]
    assert starts[:4] == [0.0, 2.0, 4.0, 6.0]
    cut = starts[4]
    assert 580 <= cut <= 600
    assert starts[4:] == pytest.approx([cut, cut + 2.0, cut + 4.0, cut + 6.0])


async def test_a_retried_long_meeting_sends_only_the_pieces_it_lacks(
    client, deps, upload_settings, org_a: Tenant, fake_openai
):
    fake_openai.fail_calls["/v1/audio/transcriptions"] = {2}  # the second piece, once
    accepted = await upload(client, org_a, long_quiet_wav(14 * 60), name="long.wav")
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)
    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "ready", recording
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert job["attempts"] == 2
    # Piece 1, piece 2 (500), then on the retry only piece 2: piece 1 came from the cache.
    assert fake_openai.calls["/v1/audio/transcriptions"] == 3
    transcript = await client.get(f"/api/recordings/{rid}/transcript", headers=org_a.auth())
    assert [s["text"] for s in transcript.json()["segments"]] == SENTENCES * 2


async def test_rerun_is_idempotent_and_reuses_transcript_and_cache(
    client, deps, upload_settings, org_a: Tenant, fake_openai
):
    accepted = await upload(client, org_a)
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)
    before = db_counts(upload_settings.database_url, rid)
    embedded = len(fake_openai.embedded)
    result = await process_recording(deps, uuid.UUID(org_a.org_id), uuid.UUID(rid))
    assert result.reused_transcript
    assert db_counts(upload_settings.database_url, rid) == before
    assert before["transcripts"] == before["documents"] == 1
    assert fake_openai.calls["/v1/audio/transcriptions"] == 1
    assert len(fake_openai.embedded) == embedded  # every chunk came from the cache


async def test_undecodable_media_fails_permanently(
    client, deps, upload_settings, org_a: Tenant, fake_openai
):
    # The right magic bytes, then garbage: accepted at upload, refused by the decoder.
    corrupt = b"RIFF" + (100_000).to_bytes(4, "little") + b"WAVEfmt " + b"\xff" * 5000
    accepted = await upload(client, org_a, io.BytesIO(corrupt).getvalue())
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)
    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "failed"
    assert "could not" in recording["error"]
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert job["status"] == "failed"
    assert job["attempts"] == 1  # not retried
    assert fake_openai.calls["/v1/audio/transcriptions"] == 0


async def test_transient_errors_retry_then_fail_with_reason(
    client, deps, upload_settings, org_a: Tenant, fake_openai
):
    # Rate limited: transient, but not an outage (a 5xx is waited out for a window, see
    # tests/reliability/test_worker_waits_for_models.py), so its attempts are counted.
    fake_openai.fail["/v1/audio/transcriptions"] = 429
    accepted = await upload(client, org_a)
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)
    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "failed"
    assert recording["error"].startswith("Gave up after 3 attempts")
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert job["status"] == "failed"
    assert job["attempts"] == 3


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_a_refused_request_fails_at_once_with_the_servers_reason(
    client, deps, upload_settings, org_a: Tenant, fake_openai, status: int
):
    fake_openai.fail["/v1/embeddings"] = status  # sending the same again cannot pass
    accepted = await upload(client, org_a)
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)
    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "failed"
    assert "rejected the embeddings request: boom" in recording["error"]
    assert fake_openai.calls["/v1/embeddings"] == 1
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert (job["status"], job["attempts"]) == ("failed", 1)


@pytest.mark.parametrize("status", [401, 404, 429])
async def test_what_an_operator_can_fix_is_retried(
    client, deps, upload_settings, org_a: Tenant, fake_openai, status: int
):
    fake_openai.fail["/v1/embeddings"] = status
    accepted = await upload(client, org_a)
    await run_jobs(upload_settings)
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert (job["status"], job["attempts"]) == ("failed", 3)


async def test_transient_error_then_success(
    client, deps, upload_settings, org_a: Tenant, fake_openai
):
    fake_openai.fail_times["/v1/embeddings"] = 1
    accepted = await upload(client, org_a)
    rid = accepted["recording"]["id"]
    await run_jobs(upload_settings)
    recording = (await client.get(f"/api/recordings/{rid}", headers=org_a.auth())).json()
    assert recording["status"] == "ready"
    job = (await client.get(f"/api/jobs/{accepted['job_id']}", headers=org_a.auth())).json()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    # The retry reused the saved transcript instead of transcribing again.
    assert fake_openai.calls["/v1/audio/transcriptions"] == 1
    assert db_counts(upload_settings.database_url, rid) == {
        "transcripts": 1,
        "transcript_chunks": 1,
        "documents": 1,
    }


async def test_deleted_recording_is_skipped(client, deps, upload_settings, org_a: Tenant):
    accepted = await upload(client, org_a)
    rid = accepted["recording"]["id"]
    assert (await client.delete(f"/api/recordings/{rid}", headers=org_a.auth())).status_code == 204
    await run_jobs(upload_settings)
    with psycopg.connect(upload_settings.database_url) as conn:
        status = conn.execute(
            "SELECT status::text FROM procrastinate_jobs WHERE id = %s", (accepted["job_id"],)
        ).fetchone()[0]
    assert status == "succeeded"
    assert db_counts(upload_settings.database_url, rid) == {
        "transcripts": 0,
        "transcript_chunks": 0,
        "documents": 0,
    }


def stall(url: str, job_id: int, attempts: int) -> None:
    """Make ``job_id`` look held by a worker that died an hour ago, after ``attempts`` tries."""
    with psycopg.connect(url) as conn:
        worker_id = conn.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour')"
            " RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s, attempts = %s "
            "WHERE id = %s",
            (worker_id, attempts, job_id),
        )


async def sweep_once(settings) -> dict[str, int]:
    from app.kit.db import Database

    worker = as_login(settings, ROLES.worker)
    app = build_app(worker)
    queue_db = Database(worker, app_role=False)
    await queue_db.open()
    try:
        async with app.open_async():
            return await sweep(app, queue_db, worker)
    finally:
        await queue_db.close()


def job_state(url: str, job_id: int) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)
        ).fetchone()
    return row[0], row[1]


async def test_sweep_retries_stalled_jobs_and_fails_orphans(
    client, deps, upload_settings, org_a: Tenant
):
    stalled = await upload(client, org_a)
    orphan = await upload(client, org_a)
    url = upload_settings.database_url
    stall(url, stalled["job_id"], attempts=0)  # its worker died an hour ago
    with psycopg.connect(url) as conn:
        # The second job ended without the recording finishing (e.g. cancelled by an operator).
        conn.execute(
            "UPDATE procrastinate_jobs SET status = 'cancelled' WHERE id = %s", (orphan["job_id"],)
        )
    result = await sweep_once(upload_settings)
    assert result == {"retried": 1, "gave_up": 0, "failed": 1}
    with psycopg.connect(url) as conn:
        assert (
            conn.execute(
                "SELECT status::text FROM procrastinate_jobs WHERE id = %s", (stalled["job_id"],)
            ).fetchone()[0]
            == "todo"
        )
    recording = (
        await client.get(f"/api/recordings/{orphan['recording']['id']}", headers=org_a.auth())
    ).json()
    assert recording["status"] == "failed"
    assert "cancelled" in recording["error"]
    await run_jobs(upload_settings)
    recording = (
        await client.get(f"/api/recordings/{stalled['recording']['id']}", headers=org_a.auth())
    ).json()
    assert recording["status"] == "ready"


async def test_a_job_whose_worker_keeps_dying_ends_failed_not_looping(
    client, deps, upload_settings, org_a: Tenant
):
    accepted = await upload(client, org_a)
    url = upload_settings.database_url
    stall(url, accepted["job_id"], attempts=1)  # job_max_attempts is 3
    assert (await sweep_once(upload_settings))["retried"] == 1
    assert job_state(url, accepted["job_id"]) == ("todo", 2)
    stall(url, accepted["job_id"], attempts=2)  # died again, on its last attempt
    result = await sweep_once(upload_settings)
    assert (result["retried"], result["gave_up"]) == (0, 1)
    assert job_state(url, accepted["job_id"])[0] == "failed"
    recording = (
        await client.get(f"/api/recordings/{accepted['recording']['id']}", headers=org_a.auth())
    ).json()
    assert recording["status"] == "failed"
    assert "stopped without finishing this recording 3 times" in recording["error"]


async def test_one_sweeper_at_a_time(client, deps, upload_settings, org_a: Tenant):
    from worker.jobs import SWEEP_LOCK

    accepted = await upload(client, org_a)
    url = upload_settings.database_url
    stall(url, accepted["job_id"], attempts=0)
    with psycopg.connect(url, autocommit=True) as other:  # another worker, mid-sweep
        other.execute("SELECT pg_advisory_lock(%s)", (SWEEP_LOCK,))
        result = await sweep_once(upload_settings)
        assert (result["retried"], result["gave_up"]) == (0, 0)
        assert job_state(url, accepted["job_id"]) == ("doing", 0)
        other.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK,))
    assert (await sweep_once(upload_settings))["retried"] == 1
    assert job_state(url, accepted["job_id"]) == ("todo", 1)


async def test_the_embedding_cache_keeps_servers_and_sizes_apart(deps, fake_openai):
    import dataclasses

    from app.ai.embedding_cache import cache_key, cache_space
    from worker.pipeline import embed_with_cache

    text = "The launch moves to May."
    first = await embed_with_cache(deps, [text])
    cached = await embed_with_cache(deps, [text])  # from the cache
    assert [v.tolist() for v in cached] == [v.tolist() for v in first]
    assert fake_openai.embedded == [text]
    # The same model name on another server is another vector space: not served from cache.
    elsewhere = dataclasses.replace(
        deps,
        settings=deps.settings.model_copy(update={"openai_base_url": "https://api.openai.com/v1"}),
    )
    await embed_with_cache(elsewhere, [text])
    assert fake_openai.embedded == [text, text]
    # A cached value of the wrong size is ignored and replaced.
    space = cache_space(deps.models, str(deps.settings.openai_base_url))
    await deps.redis.set(cache_key(space, text), b"\0" * 10)
    again = await embed_with_cache(deps, [text])
    assert len(fake_openai.embedded) == 3
    assert [v.tolist() for v in again] == [v.tolist() for v in first]
