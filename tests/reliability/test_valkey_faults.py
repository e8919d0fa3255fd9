"""Valkey hung (SIGSTOP) and killed under load (issue 15, item 3).

Rate limits fail open and the caches are skipped while Valkey does not answer, so no request
fails and none waits longer than a second; the breakers close again once it is back, and
``/readyz`` stays 200 (degraded) throughout.

The cause of the 5xx seen right after a Valkey restart was an exception path, not a status:
the limiter and the caches caught redis-py's errors (and OSError) only, and a connection that
breaks while Valkey restarts can raise what redis-py does not wrap (a RuntimeError from a
closed transport, an EOFError from a read cut short). Such an exception left the limiter's
dependency or a cache read uncaught: a 500. Both now treat any exception from Redis as Redis
not answering. And a hung Valkey cost a search three client timeouts in a row (1.5 s): the
caches now share a breaker per client, as the limiter has.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from app.kit.cache import VersionedCache, cache_breaker
from app.kit.ratelimit import SERVICES_KEY as LIMITER_KEY
from bench.faultload import HttpLoad, describe, failed
from tests.app.conftest import Tenant
from tests.reliability.conftest import OwnValkey, http_client, running_app

# CI-sized (bench/faults.py runs 20): in-process, the load shares two cores with the app and
# the model server, and a second of headroom is for the fault, not for the machine.
USERS = 10
WORDS = ("budget", "review", "planning", "offsite", "launch", "quarter", "hiring")


def own_settings(settings: Any, valkey: OwnValkey) -> Any:
    # Budgets the load cannot spend: a 429 here would hide whether the limiter answered.
    return settings.model_copy(
        update={
            "redis_url": valkey.url,
            "ratelimit_api": "1000000/60",
            "ratelimit_search": "1000000/60",
        }
    )


class BrokenTransport(Exception):
    pass


async def test_the_limiter_fails_open_on_an_exception_redis_py_does_not_wrap(
    settings, own_valkey: OwnValkey, org_a: Tenant, monkeypatch: pytest.MonkeyPatch
):
    async with (
        running_app(own_settings(settings, own_valkey)) as app,
        http_client(app) as client,
    ):
        limiter = app.state.services.extras[LIMITER_KEY]

        async def closed_transport(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

        monkeypatch.setattr(limiter.client, "evalsha", closed_transport)
        response = await client.get("/api/recordings", headers=org_a.auth())
        assert response.status_code == 200, response.text  # was 500
        assert limiter.breaker.is_open
        monkeypatch.undo()
        limiter.breaker._opened_at = time.monotonic() - limiter.breaker.cooldown  # cooled down
        response = await client.get("/api/recordings", headers=org_a.auth())
        assert response.status_code == 200
        assert not limiter.breaker.is_open  # the probe closed it
        assert "x-ratelimit-limit" in response.headers


async def test_a_cache_read_that_breaks_oddly_is_a_miss(
    own_valkey: OwnValkey, monkeypatch: pytest.MonkeyPatch
):
    from app.kit.redis import create_redis

    redis = create_redis(own_valkey.url)
    cache = VersionedCache(redis, "test", ttl_seconds=60)

    async def cut_short(*args: Any, **kwargs: Any) -> Any:
        raise EOFError("read cut short")

    monkeypatch.setattr(redis, "mget", cut_short)
    loaded = await cache.get_or_load("scope", "k", _load, encode=str.encode, decode=bytes.decode)
    assert loaded == "fresh"  # was EOFError
    assert cache_breaker(redis).is_open
    await redis.aclose()


async def _load() -> str:
    return "fresh"


async def test_a_hung_valkey_costs_a_search_one_timeout_at_most(
    settings, corpus, org_a: Tenant, own_valkey: OwnValkey
):
    async with (
        running_app(own_settings(settings, own_valkey)) as app,
        http_client(app) as client,
    ):
        own_valkey.pause()
        try:
            elapsed = []
            for word in WORDS[:3]:
                started = time.perf_counter()
                body = {"query": word, "mode": "keyword"}
                response = await client.post("/api/search", json=body, headers=org_a.auth())
                elapsed.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
        finally:
            own_valkey.resume()
    print(f"searches with Valkey hung: {[round(e, 2) for e in elapsed]} s")
    assert elapsed[0] < 1.0  # one cache timeout (0.5 s), not three
    assert max(elapsed[1:]) < 0.3  # the breaker is open: Valkey is not asked


def valkey_load(client: Any, tenant: Tenant) -> Any:
    """Reads that pass the limiter and the caches, and the readiness probe."""
    choices = [
        lambda: client.get("/api/recordings", headers=tenant.auth()),
        lambda: client.post(
            "/api/search",
            json={"query": random.choice(WORDS), "mode": random.choice(["keyword", "hybrid"])},
            headers=tenant.auth(),
        ),
        lambda: client.get("/readyz"),
    ]

    def request() -> Any:
        return random.choice(choices)()

    return request


@pytest.mark.slow
async def test_valkey_hung_then_killed_under_load(
    settings, corpus, org_a: Tenant, own_valkey: OwnValkey, model_app: Any
):
    async with (
        running_app(own_settings(settings, own_valkey), models_app=model_app) as app,
        http_client(app) as client,
    ):
        limiter = app.state.services.extras[LIMITER_KEY]
        load = HttpLoad(valkey_load(client, org_a), users=USERS, timeout=10)
        async with load.running():
            await asyncio.sleep(2.0)
            hung = load.now()
            own_valkey.pause()
            await asyncio.sleep(3.0)
            own_valkey.resume()
            await asyncio.sleep(2.0)
            killed = load.now()
            for _ in range(3):  # killed, restarted (its append-only file reloaded), again
                own_valkey.kill()
                await asyncio.sleep(0.5)
                await asyncio.to_thread(own_valkey.start)
                await asyncio.sleep(1.0)
            back = load.now()
            await asyncio.sleep(limiter.breaker.cooldown + 1.0)
        services = app.state.services
        breakers_closed = not limiter.breaker.is_open and not cache_breaker(services.redis).is_open
    print(f"\n{USERS} users; before: {describe(load.between(0, hung))}")
    print(f"Valkey hung 3 s: {describe(load.between(hung, killed))}")
    print(f"Valkey killed and restarted 3 times: {describe(load.between(killed, back))}")
    print(f"after: {describe(load.between(back))}")
    assert failed(load.samples) == [], failed(load.samples)[:5]
    slowest = max(load.samples, key=lambda s: s.elapsed)
    assert slowest.elapsed <= 1.0, slowest
    readiness = [s for s in load.samples if s.path == "/readyz"]
    assert readiness
    assert all(s.status == 200 for s in readiness)
    assert breakers_closed
