"""Caches: shared (Redis, versioned) and in-process (TTL, bounded). Neither is ever needed
for a correct answer: a failing Redis is a miss, logged and counted, never an error.

**VersionedCache** keeps values under a *scope* (an org, or one recording of an org) that has a
version. A read fetches the scope's version and the value in one round trip (``MGET``; the
scope is a Redis Cluster hash tag, so both keys share a slot) and serves the value only if it
was written at the current version. Whoever changes the data behind a scope replaces the version
*after committing* (``invalidate``): every value of the scope retires at once, which is the
"invalidation by pattern" of the seed without a ``SCAN``. The race that plain delete-on-write
caches lose — a reader loads the old row, the writer commits and deletes, the reader stores the
old row for a whole TTL — cannot happen here: that reader stores under the version it read
before loading, which the writer's new version has already retired.

**LocalCache** is a bounded TTL map in the process (cachetools) for values every request would
otherwise fetch again and that may be a little old, with one loader per key at a time.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from cachetools import TTLCache
from redis.asyncio import Redis

from app.kit.metrics import CACHE_REQUESTS
from app.kit.ratelimit import CircuitBreaker

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")

VERSION_TTL_SECONDS = 7 * 24 * 3600  # beyond any value's TTL


# How long the caches leave Redis alone after it failed them: a hung Valkey then costs one
# request one timeout (the client's 0.5 s), not every request a timeout per cache call (three in
# a search, over a second in all); a probe after the pause finds out whether it is back.
CACHE_BREAKER_SECONDS = 5.0
_breakers: weakref.WeakKeyDictionary[Redis, CircuitBreaker] = weakref.WeakKeyDictionary()


class RedisUnavailable(Exception):
    """The caches' Redis failed, or failed moments ago (its breaker is open: then ``asked`` is
    False, and the failure that opened it was logged already)."""

    def __init__(self, detail: str, *, asked: bool = True) -> None:
        super().__init__(detail)
        self.asked = asked


def cache_breaker(redis: Redis) -> CircuitBreaker:
    """The breaker of one Redis client, shared by every cache over it."""
    breaker = _breakers.get(redis)
    if breaker is None:
        breaker = _breakers[redis] = CircuitBreaker(CACHE_BREAKER_SECONDS)
    return breaker


async def guarded(redis: Redis, call: Callable[[], Awaitable[T]], *, always: bool = False) -> T:
    """``call()`` on ``redis``, or RedisUnavailable: at once while the breaker is open (unless
    ``always``: an invalidation is tried whatever the breaker says, or a value it should
    retire would be served again once Redis is back).

    Any failure becomes RedisUnavailable, not only redis-py's own errors: a connection broken
    while Valkey restarts can raise what redis-py does not wrap (OSError, RuntimeError,
    EOFError), and a cache must never be the reason a request fails."""
    breaker = cache_breaker(redis)
    if not breaker.allow() and not always:
        raise RedisUnavailable("not asked: it failed moments ago", asked=False)
    try:
        result = await call()
    except Exception as exc:
        breaker.failed()
        raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except BaseException:
        breaker.abandoned()
        raise
    breaker.succeeded()
    return result


def _new_version() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Ticket:
    """What a read saw: where the value goes, and the scope's version when it was read."""

    version_key: str
    value_key: str
    version: str | None  # None: Redis failed, so nothing is written back


class VersionedCache:
    def __init__(
        self, redis: Redis, namespace: str, *, ttl_seconds: int, key_prefix: str = ""
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_seconds = ttl_seconds
        self.key_prefix = key_prefix  # REDIS_KEY_PREFIX

    def _keys(self, scope: str, key: str) -> tuple[str, str]:
        base = f"{self.key_prefix}{self.namespace}:{{{scope}}}"
        return f"{base}:gen", f"{base}:{key}"

    async def read(self, scope: str, key: str) -> tuple[bytes | None, Ticket]:
        """The value if one was written at the scope's current version.

        Stored as ``<version>\n<value>``: the value's bytes come back as they went in, so a
        cached HTTP body is sent without being parsed and serialised again.
        """
        version_key, value_key = self._keys(scope, key)
        if self.ttl_seconds == 0:
            return None, Ticket(version_key, value_key, None)
        try:
            version, raw = await guarded(
                self.redis, lambda: self.redis.mget([version_key, value_key])
            )
        except RedisUnavailable as exc:
            if exc.asked:  # a skip: the failure that opened the breaker was logged
                log.warning("cache unavailable", cache=self.namespace, error=str(exc))
            CACHE_REQUESTS.labels(self.namespace, "error").inc()
            return None, Ticket(version_key, value_key, None)
        if not isinstance(version, bytes):
            version = await self._first_version(version_key)
            if version is None:
                return None, Ticket(version_key, value_key, None)
        current = version.decode()
        ticket = Ticket(version_key, value_key, current)
        stored_version, _, value = (
            raw.partition(b"\n") if isinstance(raw, bytes) else (b"", b"", b"")
        )
        if not isinstance(raw, bytes) or stored_version != current.encode():
            CACHE_REQUESTS.labels(self.namespace, "miss").inc()
            return None, ticket
        CACHE_REQUESTS.labels(self.namespace, "hit").inc()
        return value, ticket

    async def write(self, ticket: Ticket, value: bytes) -> None:
        """Keep ``value`` under the version the read saw."""
        if self.ttl_seconds == 0 or ticket.version is None:
            return
        stored = ticket.version.encode() + b"\n" + value
        try:
            await guarded(
                self.redis, lambda: self.redis.set(ticket.value_key, stored, ex=self.ttl_seconds)
            )
        except RedisUnavailable as exc:
            if exc.asked:  # a skip: the failure that opened the breaker was logged
                log.warning("cache not written", cache=self.namespace, error=str(exc))

    async def _first_version(self, version_key: str) -> bytes | None:
        """A scope without a version (never invalidated, or its key expired or was evicted)
        gets a fresh random one: values stored under any earlier version can never match it."""

        async def first() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(version_key, _new_version(), nx=True, ex=VERSION_TTL_SECONDS)
                pipe.get(version_key)
                return await pipe.execute()

        try:
            _, version = await guarded(self.redis, first)
        except RedisUnavailable as exc:
            if exc.asked:  # a skip: the failure that opened the breaker was logged
                log.warning("cache unavailable", cache=self.namespace, error=str(exc))
            CACHE_REQUESTS.labels(self.namespace, "error").inc()
            return None
        return version if isinstance(version, bytes) else None

    async def invalidate(self, scope: str) -> None:
        """Retire every value of ``scope``. Call after the change has committed."""
        version_key, _ = self._keys(scope, "")
        try:
            # A random version, not a counter: a counter whose key expired or was evicted
            # would count again through values it already retired.
            await guarded(
                self.redis,
                lambda: self.redis.set(version_key, _new_version(), ex=VERSION_TTL_SECONDS),
                always=True,
            )
        except RedisUnavailable as exc:
            # The values then live out their TTL: say so, loudly enough to be seen.
            log.warning("cache not invalidated", cache=self.namespace, scope=scope, error=str(exc))
            CACHE_REQUESTS.labels(self.namespace, "error").inc()

    async def get_or_load(
        self,
        scope: str,
        key: str,
        load: Callable[[], Awaitable[T]],
        *,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> T:
        value, ticket = await self.read(scope, key)
        if value is not None:
            try:
                return decode(value)
            except ValueError:  # not ours to trust: load afresh, and replace it
                log.warning("cache value unreadable", cache=self.namespace)
        loaded = await load()
        await self.write(ticket, encode(loaded))
        return loaded


class LocalCache:
    """A bounded in-process TTL cache with one loader per key at a time (no stampede)."""

    def __init__(self, name: str, *, maxsize: int, ttl_seconds: float) -> None:
        self.name = name
        self._values: TTLCache[Hashable, Any] = TTLCache(maxsize=maxsize, ttl=ttl_seconds)
        self._loading: dict[Hashable, asyncio.Lock] = {}

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        try:
            value: T = self._values[key]
        except KeyError:
            pass
        else:
            CACHE_REQUESTS.labels(self.name, "hit").inc()
            return value
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            try:  # another caller may have loaded it while this one waited
                value = self._values[key]
            except KeyError:
                CACHE_REQUESTS.labels(self.name, "miss").inc()
                value = await load()
                self._values[key] = value
            else:
                CACHE_REQUESTS.labels(self.name, "hit").inc()
        if not lock.locked():
            self._loading.pop(key, None)
        return value
