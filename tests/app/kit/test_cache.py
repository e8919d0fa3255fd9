"""The caches against a real Valkey: versions, the write-after-invalidate race, fail-open."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from app.kit.cache import LocalCache, VersionedCache
from app.kit.redis import create_redis
from tests.conftest import free_port


@pytest.fixture
async def redis(redis_url):
    client = create_redis(redis_url, timeout=2.0)
    yield client
    await client.aclose()


def counted(cache: str, result: str) -> float:
    labels = {"cache": cache, "result": result}
    return REGISTRY.get_sample_value("record_cache_requests_total", labels) or 0.0


async def test_a_value_is_served_until_its_scope_is_invalidated(redis):
    cache = VersionedCache(redis, "t1", ttl_seconds=60)
    value, ticket = await cache.read("org-a", "k")
    assert value is None
    await cache.write(ticket, b"one")
    hits = counted("t1", "hit")
    assert (await cache.read("org-a", "k"))[0] == b"one"
    assert counted("t1", "hit") == hits + 1
    # Another scope is untouched by the first's invalidation, and vice versa.
    _, other = await cache.read("org-b", "k")
    await cache.write(other, b"two")
    await cache.invalidate("org-a")
    assert (await cache.read("org-a", "k"))[0] is None
    assert (await cache.read("org-b", "k"))[0] == b"two"


async def test_a_reader_that_loaded_before_a_change_never_serves_it(redis):
    """Read (miss) -> load the old data -> the writer commits and invalidates -> the reader
    stores what it loaded: the next read must not serve it."""
    cache = VersionedCache(redis, "t2", ttl_seconds=60)
    _, ticket = await cache.read("scope", "k")
    old = b"before"
    await cache.invalidate("scope")  # the writer, between the reader's load and store
    await cache.write(ticket, old)
    assert (await cache.read("scope", "k"))[0] is None
    # Stored at the current version, it is served.
    _, ticket = await cache.read("scope", "k")
    await cache.write(ticket, b"after\nwith a newline")
    assert (await cache.read("scope", "k"))[0] == b"after\nwith a newline"


async def test_values_expire_and_a_zero_ttl_caches_nothing(redis):
    cache = VersionedCache(redis, "t3", ttl_seconds=1)
    _, ticket = await cache.read("s", "k")
    await cache.write(ticket, b"1")
    assert await redis.ttl(ticket.value_key) in {0, 1}
    off = VersionedCache(redis, "t4", ttl_seconds=0)
    _, ticket = await off.read("s", "k")
    await off.write(ticket, b"1")
    assert (await off.read("s", "k"))[0] is None
    assert await redis.exists(ticket.value_key) == 0


async def test_garbage_under_a_key_is_a_miss(redis):
    cache = VersionedCache(redis, "t5", ttl_seconds=60)
    _, ticket = await cache.read("s", "k")
    for junk in (b"no version line", b"1\nfrom another version", b""):
        await redis.set(ticket.value_key, junk)
        assert (await cache.read("s", "k"))[0] is None


async def test_a_cache_whose_redis_is_gone_is_a_miss_not_an_error():
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    cache = VersionedCache(dead, "t6", ttl_seconds=60)
    errors = counted("t6", "error")
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        return str(loads).encode()

    for expected in (b"1", b"2"):  # loaded every time, never raised
        got = await cache.get_or_load("s", "k", load, encode=bytes, decode=bytes)
        assert got == expected
    await cache.invalidate("s")
    assert counted("t6", "error") == errors + 3
    await dead.aclose()


async def test_the_local_cache_loads_once_for_many_callers_and_expires():
    cache = LocalCache("t7", maxsize=10, ttl_seconds=0.2)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return loads

    values = await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(20)))
    assert values == [1] * 20
    assert loads == 1
    assert counted("t7", "miss") == 1
    assert counted("t7", "hit") == 19
    await asyncio.sleep(0.25)
    assert await cache.get_or_load("k", load) == 2


async def test_a_version_never_comes_back_even_when_its_key_is_lost(redis):
    """Evicted or expired, a scope's version key must not return to a value that old entries
    were stored under: they would be served again."""
    cache = VersionedCache(redis, "t8", ttl_seconds=60)
    _, ticket = await cache.read("s", "k")
    await cache.write(ticket, b"old")
    await cache.invalidate("s")
    await cache.invalidate("s")
    await redis.delete(ticket.version_key)  # evicted
    await cache.invalidate("s")
    await cache.invalidate("s")
    assert (await cache.read("s", "k"))[0] is None
    await redis.delete(ticket.version_key)  # and lost with no invalidation after it
    assert (await cache.read("s", "k"))[0] is None
