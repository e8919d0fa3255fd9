"""PostgreSQL stopped for a while under load (issue 15, item 2).

A PostgreSQL of the test's own is stopped (a fast shutdown, as a restart or a failover does
it) while virtual users list recordings, and started again. While it is away the API answers
503 problem+json with ``Retry-After``, never a 500, and never waits past the pool's timeout;
within seconds of its return every answer is a 200 again, without a restart of the API. An
upload accepted just before the stop, and one made after, end ``ready``: the worker, left
running throughout, resumes by itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from bench.faultload import HttpLoad, describe, failed, recovery_seconds
from tests.app.conftest import make_tenant
from tests.app.recordings.test_upload import upload, wav_bytes
from tests.conftest import free_port
from tests.reliability.conftest import (
    OwnPostgres,
    http_client,
    model_server,
    running_app,
    worker,
)

pytestmark = pytest.mark.slow

DOWN_SECONDS = 10.0
USERS = 10
RECOVERY_SECONDS = 5.0


def recording_status(url: str, recording_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status FROM recordings WHERE id = %s", (recording_id,)
        ).fetchone()
    return str(row[0]) if row else "gone"


async def wait_ready(url: str, recording_ids: list[str], within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    while True:
        statuses = {rid: recording_status(url, rid) for rid in recording_ids}
        if all(s in {"ready", "failed"} for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.3)


async def test_postgres_stopped_under_load(settings, own_postgres: OwnPostgres, model_app: Any):
    port = free_port()
    own = settings.model_copy(
        update={
            "database_url": own_postgres.url,
            "openai_base_url": f"http://127.0.0.1:{port}/v1",
            "ratelimit_api": "1000000/60",
            "ratelimit_upload": "1000/3600",
            "job_retry_base_seconds": 1.0,
        }
    )
    async with (
        model_server(model_app, port),
        running_app(own) as app,
        http_client(app) as client,
        worker(own),
    ):
        tenant = await make_tenant(client, "Acme")
        load = HttpLoad(
            lambda: client.get("/api/recordings", headers=tenant.auth()), users=USERS, timeout=30
        )
        async with load.running():
            await asyncio.sleep(2.0)
            before = await upload(client, tenant, wav_bytes(2.0), "before.wav")
            assert before.status_code == 202, before.text
            stopped = load.now()
            await asyncio.to_thread(own_postgres.stop)
            await asyncio.sleep(DOWN_SECONDS)
            await asyncio.to_thread(own_postgres.start)
            back = load.now()
            await asyncio.sleep(8.0)
        after = await upload(client, tenant, wav_bytes(2.0), "after.wav")
        assert after.status_code == 202, after.text
        ids = [before.json()["recording"]["id"], after.json()["recording"]["id"]]
        statuses = await wait_ready(own_postgres.url, ids, 90)

    during = load.between(stopped, back)
    print(f"\n{USERS} users; before: {describe(load.between(0, stopped))}")
    print(f"Postgres down {DOWN_SECONDS:.0f}s: {describe(during)}")
    print(f"after: {describe(load.between(back))}")
    recovery = recovery_seconds(load.samples, back)
    print(f"the last 503 {recovery:.2f}s after its return")
    bad = failed(load.samples, frozenset({503}))
    assert bad == [], bad[:5]
    unavailable = [s for s in load.samples if s.status == 503]
    assert unavailable, "the outage was not seen"
    assert all(s.content_type == "application/problem+json" for s in unavailable)
    assert all(s.retry_after for s in unavailable)
    assert max(s.elapsed for s in load.samples) < own.database_pool_timeout_seconds + 1.0
    assert recovery < RECOVERY_SECONDS
    assert statuses == dict.fromkeys(ids, "ready"), statuses
