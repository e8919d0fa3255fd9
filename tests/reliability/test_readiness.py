"""Readiness means "can serve" (issue 15, item 1).

/readyz fails (503 problem+json) only without the database or with the schema behind; Valkey
down or hung is "degraded" with 200. It answers within its own budget, under the readiness
probe's 2 s timeout, even when every pooled connection is busy or the database hangs. /livez
touches nothing.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import psycopg

from app.health.routes import CHECK_TIMEOUT
from app.kit.db import database_name
from tests.conftest import free_port
from tests.reliability.conftest import OwnValkey, SilentHost, http_client, running_app

# The readiness probe's timeoutSeconds (infra/api.py): past it, the kubelet counts a
# failure whatever the answer would have been.
PROBE_TIMEOUT = 2.0


async def timed_get(client: Any, path: str) -> tuple[Any, float]:
    started = time.perf_counter()
    response = await client.get(path)
    return response, time.perf_counter() - started


def assert_not_ready(response: Any, failing: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"]
    body = response.json()
    assert body["status"] == 503
    assert body["code"] == "not_ready"
    assert body["type"].endswith("/not_ready")
    assert failing in body["detail"]
    assert body["checks"][failing]["ok"] is False


async def test_ready_reports_every_check(client):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["database"]["revision"]
    assert body["checks"]["database"]["via"] == "pool"
    assert body["checks"]["redis"]["ok"] is True


async def test_valkey_stopped_is_degraded_not_unready(settings, own_valkey: OwnValkey):
    async with (
        running_app(settings.model_copy(update={"redis_url": own_valkey.url})) as app,
        http_client(app) as client,
    ):
        assert (await client.get("/readyz")).json()["status"] == "ready"
        own_valkey.stop()
        response, elapsed = await timed_get(client, "/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert "rate limits fail open" in body["checks"]["redis"]["impact"]
    assert body["checks"]["database"]["ok"] is True
    assert elapsed < PROBE_TIMEOUT


async def test_valkey_hung_is_degraded_within_the_probe_timeout(settings, own_valkey: OwnValkey):
    async with (
        running_app(settings.model_copy(update={"redis_url": own_valkey.url})) as app,
        http_client(app) as client,
    ):
        own_valkey.pause()
        try:
            response, elapsed = await timed_get(client, "/readyz")
        finally:
            own_valkey.resume()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "degraded"
    assert elapsed < PROBE_TIMEOUT


async def test_database_refusing_connections_is_503_at_once(settings):
    # The server is up, the API's database is not (a restart, a failover): connections are
    # refused, the pooled ones are gone.
    name = database_name(settings.database_url)
    async with running_app(settings) as app, http_client(app) as client:
        with psycopg.connect(settings.database_url, autocommit=True, dbname="postgres") as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        try:
            # The first probe finds the pooled connection dead; the next finds none to take.
            for _ in range(2):
                response, elapsed = await timed_get(client, "/readyz")
                assert_not_ready(response, "database")
                assert elapsed < PROBE_TIMEOUT
        finally:
            with psycopg.connect(settings.database_url, autocommit=True, dbname="postgres") as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # Back by itself, without a restart of the API.
        deadline = time.monotonic() + 10
        while (response := await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, response.text
        assert response.json()["status"] == "ready"


async def test_database_host_down_is_503_at_once(settings):
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/record"
    async with (
        running_app(
            settings.model_copy(update={"database_url": unreachable}), wait_for_pool=False
        ) as app,
        http_client(app) as client,
    ):
        response, elapsed = await timed_get(client, "/readyz")
        livez = await client.get("/livez")
    assert_not_ready(response, "database")
    assert response.json()["checks"]["redis"]["ok"] is True
    assert elapsed < 1.0  # refused: nothing to wait for
    assert livez.status_code == 200


async def test_database_hung_is_503_within_the_probe_timeout(settings, silent_host: SilentHost):
    hung = f"postgresql://postgres@127.0.0.1:{silent_host.port}/record?connect_timeout=30"
    async with (
        running_app(settings.model_copy(update={"database_url": hung}), wait_for_pool=False) as app,
        http_client(app) as client,
    ):
        response, elapsed = await timed_get(client, "/readyz")
        silent_host.close()  # or the pool's connection attempts hold up the app's shutdown
    assert_not_ready(response, "database")
    assert "no answer within" in response.json()["checks"]["database"]["error"]
    assert CHECK_TIMEOUT <= elapsed < PROBE_TIMEOUT


async def test_saturated_pool_still_ready_within_the_probe_timeout(app, client):
    # Load has every pooled connection busy: the API is serving, so it stays in rotation, and
    # the probe gets its answer before its own timeout.
    pool = app.state.services.db.pool
    async with AsyncExitStack() as held:
        for _ in range(pool.max_size):
            await held.enter_async_context(pool.connection(timeout=5))
        assert pool.get_stats().get("pool_available", 0) == 0
        response, elapsed = await timed_get(client, "/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["via"] == "direct"
    assert body["checks"]["database"]["pool"]["available"] == 0
    assert elapsed < PROBE_TIMEOUT


async def test_saturated_pool_with_schema_behind_is_still_not_ready(app, client, settings):
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    pool = app.state.services.db.pool
    async with AsyncExitStack() as held:
        for _ in range(pool.max_size):
            await held.enter_async_context(pool.connection(timeout=5))
        response, elapsed = await timed_get(client, "/readyz")
    assert_not_ready(response, "database")
    assert "record db upgrade" in response.json()["checks"]["database"]["error"]
    assert elapsed < PROBE_TIMEOUT


async def test_livez_touches_no_dependency(settings, silent_host: SilentHost):
    hung = f"postgresql://postgres@127.0.0.1:{silent_host.port}/record"
    nowhere = {"database_url": hung, "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    async with (
        running_app(settings.model_copy(update=nowhere), wait_for_pool=False) as app,
        http_client(app) as client,
    ):
        response, elapsed = await timed_get(client, "/livez")
        silent_host.close()
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}
    assert elapsed < 0.5


async def test_under_load_that_saturates_the_pool_ready_answers_in_time(
    app, client, settings, org_a
):
    # Real requests hold every pooled connection and queue for more: each list of recordings
    # waits on a lock a long transaction holds, as requests do behind a slow migration or a
    # stuck statement.
    pool = app.state.services.db.pool
    requests = 3 * pool.max_size
    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE recordings IN ACCESS EXCLUSIVE MODE")
        load = [
            asyncio.create_task(client.get("/api/recordings", headers=org_a.auth()))
            for _ in range(requests)
        ]
        deadline = time.monotonic() + 10
        while pool.get_stats().get("requests_waiting", 0) == 0:
            assert time.monotonic() < deadline, pool.get_stats()
            await asyncio.sleep(0.05)
        response, elapsed = await timed_get(client, "/readyz")
        assert not any(task.done() for task in load)  # the load was still waiting throughout
        locker.rollback()
    answers = await asyncio.gather(*load)
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["database"]["via"] == "direct"
    assert response.json()["checks"]["database"]["pool"]["waiting"] > 0
    assert elapsed < PROBE_TIMEOUT
    assert [r.status_code for r in answers] == [200] * requests
