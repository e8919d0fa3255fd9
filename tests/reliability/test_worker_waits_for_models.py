"""Uploads made while the model server is down wait and retry with backoff, and end ``ready``
once it is back (issue 15, item 6).

procrastinate's real worker runs the pipeline as the worker's login role; the model server is
the real one (the local models behind its HTTP API) on a real port, where nothing listens until
the test starts it, after the job has failed and been put back more than once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.app.conftest import Tenant
from tests.app.recordings.test_upload import upload, wav_bytes
from tests.conftest import free_port
from tests.reliability.conftest import model_server, worker
from worker.jobs import PipelineRetry

pytestmark = pytest.mark.slow


def retry_waits(url: str, recording_id: str) -> list[float]:
    """Seconds from each failed attempt to the next start: the backoff the job was given."""
    with psycopg.connect(url) as conn:
        events = conn.execute(
            "SELECT e.type::text, e.at FROM procrastinate_events e "
            "JOIN procrastinate_jobs j ON j.id = e.job_id "
            "WHERE j.args->>'recording_id' = %s ORDER BY e.id",
            (recording_id,),
        ).fetchall()
    waits, failed_at = [], None
    for kind, at in events:
        if kind == "deferred_for_retry":
            failed_at = at
        elif kind == "started" and failed_at is not None:
            waits.append((at - failed_at).total_seconds())
            failed_at = None
    return waits


def job_row(url: str, recording_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT j.status::text, j.attempts, r.status "
            "FROM procrastinate_jobs j JOIN recordings r "
            "ON r.id = (j.args->>'recording_id')::uuid WHERE r.id = %s",
            (recording_id,),
        ).fetchone()
    assert row is not None
    return {"job": row[0], "attempts": row[1], "recording": row[2]}


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.2)


# Longer than the old policy's reach: five attempts 2, 4, 8 and 16 s apart gave up about 37 s
# after the first (the attempts' own time included).
OUTAGE_SECONDS = 45.0


async def test_an_upload_waits_out_a_long_outage_and_ends_ready(
    app, client, settings, org_a: Tenant, model_app: Any
):
    port = free_port()  # nothing listens here yet: connections are refused
    worker_settings = settings.model_copy(
        update={
            "openai_base_url": f"http://127.0.0.1:{port}/v1",
            # Short, still doubling, then capped, so the test sees many attempts in its minute
            # (whole seconds: PipelineRetry rounds down). The window stays the default 30 min.
            "job_retry_base_seconds": 1.0,
            "model_outage_retry_max_wait_seconds": 4.0,
        }
    )
    old = PipelineRetry(settings.job_max_attempts, 2.0)
    old_reach = sum(old.wait_seconds(n) for n in range(settings.job_max_attempts - 1))
    assert old_reach < OUTAGE_SECONDS  # the old schedule had given up before the server returned
    response = await upload(client, org_a, wav_bytes(2.0), "stand-up.wav")
    assert response.status_code == 202, response.text
    recording_id = response.json()["recording"]["id"]

    async with worker(worker_settings):
        started = time.monotonic()
        await wait_for(
            lambda: job_row(settings.database_url, recording_id)["attempts"] >= 1,
            30,
            "a failed attempt",
        )
        waiting = (await client.get(f"/api/recordings/{recording_id}", headers=org_a.auth())).json()
        assert waiting["status"] != "failed", waiting
        assert "Waiting for the model server" in (waiting["error"] or ""), waiting
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
        down = job_row(settings.database_url, recording_id)
        assert down["recording"] != "failed", down  # still waiting, not given up
        assert down["job"] in {"todo", "doing"}, down
        # More attempts than the old policy allowed in all.
        assert down["attempts"] >= settings.job_max_attempts, down

        async with model_server(model_app, port):
            await wait_for(
                lambda: (
                    job_row(settings.database_url, recording_id)["recording"] in {"ready", "failed"}
                ),
                60,
                "the recording to finish",
            )
    done = job_row(settings.database_url, recording_id)
    assert done["recording"] == "ready", done
    assert done["job"] == "succeeded", done
    waits = retry_waits(settings.database_url, recording_id)
    print(f"outage of {OUTAGE_SECONDS:.0f}s: {done['attempts']} attempts, waits {waits}")
    assert len(waits) >= settings.job_max_attempts, waits
    # Doubling from JOB_RETRY_BASE_SECONDS, capped at MODEL_OUTAGE_RETRY_MAX_WAIT_SECONDS.
    assert waits[0] >= 0.9, waits
    assert waits[1] >= 1.9, waits
    assert max(waits) < 4.0 + 2.0, waits
    recording = (await client.get(f"/api/recordings/{recording_id}", headers=org_a.auth())).json()
    assert recording["error"] is None  # the note went with the first step of the good attempt


async def test_an_outage_past_the_window_fails_the_upload_with_a_reason(
    app, client, settings, org_a: Tenant
):
    window = 4.0
    worker_settings = settings.model_copy(
        update={
            "openai_base_url": f"http://127.0.0.1:{free_port()}/v1",
            "job_retry_base_seconds": 1.0,
            "model_outage_retry_max_wait_seconds": 1.0,
            "model_outage_retry_seconds": window,
        }
    )
    response = await upload(client, org_a, wav_bytes(2.0), "stand-up.wav")
    assert response.status_code == 202, response.text
    recording_id = response.json()["recording"]["id"]
    async with worker(worker_settings):
        await wait_for(
            lambda: job_row(settings.database_url, recording_id)["job"] == "failed",
            30,
            "the job to give up",
        )
    done = job_row(settings.database_url, recording_id)
    assert done["recording"] == "failed", done
    assert done["attempts"] >= 2, done  # it waited and tried again before giving up
    recording = (await client.get(f"/api/recordings/{recording_id}", headers=org_a.auth())).json()
    assert recording["error"].startswith("The model server could not be reached for 4 seconds")
    assert "Could not reach the model server" in recording["error"]
