"""REDIS_KEY_PREFIX against a real Valkey, as a user whose ACL allows only keys under the prefix
(what a preview stack gets on its base's ElastiCache: infra/preview.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import NoPermissionError

from app.kit.cache import VersionedCache
from app.kit.ratelimit import RateLimiter, create_limiter_redis, parse_rate, window_key
from app.kit.redis import create_redis
from app.recordings.direct import pending_key, state_key
from app.settings import Settings

PREFIX = "pr-7:"
# As infra/preview.py writes it (ElastiCache's access-string syntax is Valkey's ACL rules).
ACCESS = "on ~pr-7:* +@all -@dangerous"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def preview_url(redis_url: str, admin: aioredis.Redis) -> AsyncIterator[str]:
    password = secrets.token_hex(16)
    await admin.execute_command("ACL", "SETUSER", "pr-7", "reset", *ACCESS.split(), f">{password}")
    parts = urlsplit(redis_url)
    netloc = f"pr-7:{password}@{parts.hostname}:{parts.port}"
    yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    await admin.execute_command("ACL", "DELUSER", "pr-7")


async def test_the_rate_limiter_works_within_the_prefix(preview_url: str, admin: aioredis.Redis):
    limiter = RateLimiter(
        create_limiter_redis(preview_url, 500),
        {"api": parse_rate("2/60")},
        timeout_ms=500,
        breaker_seconds=5,
        key_prefix=PREFIX,
    )
    try:
        first = await limiter.hit("api", "user:1")
        second = await limiter.hit("api", "user:1")
        third = await limiter.hit("api", "user:1")
        assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
        assert not any(d.fail_open for d in (first, second, third))
        assert await admin.exists(window_key("api", "user:1", PREFIX))
        assert await limiter.refund(second)
        assert await limiter.forget("api", "user:1")
    finally:
        await limiter.aclose()


async def test_without_the_prefix_the_user_may_touch_nothing(preview_url: str):
    client = create_redis(preview_url, timeout=2.0)
    try:
        with pytest.raises(NoPermissionError):
            await client.set(window_key("api", "user:1"), b"x")
        with pytest.raises(NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()


async def test_the_versioned_cache_works_within_the_prefix(preview_url: str, admin: aioredis.Redis):
    client = create_redis(preview_url, timeout=2.0)
    try:
        cache = VersionedCache(client, "search", ttl_seconds=60, key_prefix=PREFIX)
        value, ticket = await cache.read("org-a", "k")
        assert value is None
        assert ticket.version is not None  # Redis answered
        await cache.write(ticket, b"one")
        assert (await cache.read("org-a", "k"))[0] == b"one"
        await cache.invalidate("org-a")
        assert (await cache.read("org-a", "k"))[0] is None
        keys = [key.decode() async for key in admin.scan_iter()]
        assert keys
        assert all(key.startswith(PREFIX) for key in keys)
    finally:
        await client.aclose()


def test_upload_keys_take_the_prefix():
    upload = uuid4()
    assert pending_key(upload, PREFIX) == f"pr-7:upload:{upload}"
    assert state_key(upload, PREFIX) == f"pr-7:upload:{upload}:state"
    assert pending_key(upload) == f"upload:{upload}"


@pytest.mark.parametrize("prefix", ["pr{7}:", "a b", "x" * 65])
def test_a_prefix_that_would_change_a_hash_tag_is_refused(prefix: str):
    with pytest.raises(ValidationError):
        Settings(redis_key_prefix=prefix)


async def test_an_org_purge_forgets_only_keys_under_the_prefix(
    preview_url: str, admin: aioredis.Redis
):
    from worker.audio import RedisPieceCache
    from worker.purge import forget_cached

    org = uuid4()
    await admin.set(f"search:{{{org}}}:gen", b"base")  # another stack's key naming the same id
    client = create_redis(preview_url, timeout=2.0)
    try:
        pieces = RedisPieceCache(client, scope=f"{org}:r", key_prefix=PREFIX)
        assert pieces.prefix.startswith(PREFIX)
        await client.set(f"{PREFIX}search:{{{org}}}:gen", b"preview")
        assert await forget_cached(client, org, PREFIX) == 1
        assert await admin.exists(f"search:{{{org}}}:gen")
    finally:
        await client.aclose()
