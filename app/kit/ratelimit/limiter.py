"""The process's limiters over one Redis client: a decision per request, failing open.

The limiter must never be the reason a request fails. Its client is its own (a timeout in tens
of ms would be wrong for everything else), without retries (they would only double the time a
request waits for a Redis that is not answering), on a ``BlockingConnectionPool``: a flood of
requests waits for one of ``MAX_CONNECTIONS`` connections instead of opening one each until
Redis's ``maxclients`` turns everyone else away too. Every call (waiting for a connection,
connecting, writing, reading) is bounded by one ``asyncio.timeout`` of ``ratelimit_timeout_ms``;
a call cut short mid-reply loses its connection (redis-py disconnects on any exception there),
so a late reply is never read as another's. After a failure a circuit breaker skips Redis for
``ratelimit_breaker_seconds`` before letting one probe through (half-open). While Redis cannot
decide, requests pass, a warning is logged and ``record_ratelimit_fail_open_total`` counts
them.

A decision admitted by mistake can be taken back (``refund``: the request turned out not to be
the kind the limiter counts, e.g. a login whose password was right, where only failures count),
and a subject's window can be emptied (``forget``). Both are single idempotent commands, bounded
and breaker-guarded like a decision; when they fail, the window keeps a request too many.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, TypeVar, get_args

import redis
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from app.kit.metrics import RATELIMIT_DECISIONS, RATELIMIT_FAIL_OPEN
from app.kit.ratelimit.breaker import CircuitBreaker
from app.kit.ratelimit.script import (
    SLIDING_WINDOW_LUA,
    Decision,
    Rate,
    decision_from_reply,
    parse_rate,
    window_key,
)
from app.settings import Settings

log = structlog.stdlib.get_logger("record.ratelimit")
T = TypeVar("T")

LimiterName = Literal[
    "api",
    "search",
    "chat",
    "upload",
    "share",
    "anonymous",
    "media",
    "signup",
    "share_page",
    "password_reset",
    "login",
    "login_failures_ip",
    "login_failures_ip_email",
    "login_failures_email",
]
LIMITER_NAMES: tuple[LimiterName, ...] = get_args(LimiterName)

FailReason = Literal["timeout", "error", "breaker_open"]

# At most this many connections at once per process (see the module's docstring).
MAX_CONNECTIONS = 256


def rates_from_settings(settings: Settings) -> dict[str, Rate]:
    return {name: parse_rate(getattr(settings, f"ratelimit_{name}")) for name in LIMITER_NAMES}


def create_limiter_redis(
    url: str,
    timeout_ms: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    client_name: str = "record-ratelimit",
) -> Redis:
    """The limiter's client. No socket timeout: the caller's ``asyncio.timeout`` bounds the
    whole call, and redis-py would pay an ``asyncio.wait_for`` per write to enforce its own.
    Named, so that ``CLIENT LIST`` tells the limiter's connections from the caches'."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,  # the wait for a free connection is inside the caller's timeout too
        socket_timeout=None,
        socket_connect_timeout=timeout_ms / 1000,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        client_name=client_name,
        # Off: in redis-py 8's default ("auto") the pool skips its check-out probe, and a
        # connection Redis closed (a restart, a failover) is handed out and fails the decision.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return Redis.from_pool(pool)


class RateLimiter:
    """The process's limiters (by name) over one Redis client, with timeout and breaker."""

    def __init__(
        self,
        client: Redis,
        rates: Mapping[str, Rate],
        *,
        timeout_ms: int,
        breaker_seconds: float,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        key_prefix: str = "",
    ) -> None:
        self.client = client
        self.rates = dict(rates)
        self.timeout = timeout_ms / 1000
        self.breaker = CircuitBreaker(breaker_seconds, clock)
        self.enabled = enabled
        self.key_prefix = key_prefix  # REDIS_KEY_PREFIX
        # EVALSHA, loading the script on NOSCRIPT (a restarted or flushed Redis) and again.
        self._script = client.register_script(SLIDING_WINDOW_LUA)
        # Member names unique across processes: a random per-process prefix and a counter.
        self._member_prefix = secrets.token_hex(8).encode() + b":"
        self._counter = itertools.count()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            create_limiter_redis(settings.redis_url, settings.ratelimit_timeout_ms),
            rates_from_settings(settings),
            timeout_ms=settings.ratelimit_timeout_ms,
            breaker_seconds=settings.ratelimit_breaker_seconds,
            enabled=settings.ratelimit_enabled,
            key_prefix=settings.redis_key_prefix,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _key(self, limiter: str, subject: str) -> str:
        return window_key(limiter, subject, self.key_prefix)

    async def hit(self, limiter: str, subject: str) -> Decision:
        """Count one request of ``subject`` against ``limiter``; admitted or not, say so.

        Never raises for Redis trouble: that is a fail-open decision (allowed, with
        ``fail_open=True``).
        """
        rate = self.rates[limiter]
        if not self.breaker.allow():
            return self._fail_open(limiter, rate, "breaker_open", None)
        member = b"%s%d" % (self._member_prefix, next(self._counter))
        key = self._key(limiter, subject)
        args = (rate.limit, rate.window_ms, member)
        try:
            reply = await self._bounded(self._script(keys=(key,), args=args))
        except (TimeoutError, redis.TimeoutError) as exc:  # ours, or the connect's
            return self._failed(limiter, rate, "timeout", exc)
        # Not only redis-py's errors: a connection broken while Valkey restarts can raise what
        # redis-py does not wrap (RuntimeError, EOFError), and the limiter fails open on all.
        except Exception as exc:
            return self._failed(limiter, rate, "error", exc)
        if self.breaker.succeeded():
            log.info("rate limiter recovered: Redis answers again", limiter=limiter)
        decision = decision_from_reply(limiter, rate, int(reply), subject, member)
        RATELIMIT_DECISIONS.labels(limiter, "allowed" if decision.allowed else "refused").inc()
        return decision

    async def refund(self, decision: Decision) -> bool:
        """Take back the request ``decision`` admitted (idempotent). False when there was
        nothing to take back or Redis did not answer (then the window keeps it)."""
        if not decision.member:
            return False
        key = self._key(decision.limiter, decision.subject)
        return await self._command(
            decision.limiter, "refund", lambda: self.client.zrem(key, decision.member)
        )

    async def forget(self, limiter: str, subject: str) -> bool:
        """Empty ``subject``'s window of ``limiter``. False when Redis did not answer."""
        key = self._key(limiter, subject)
        return await self._command(limiter, "forget", lambda: self.client.delete(key))

    async def _bounded(self, call: Awaitable[T]) -> T:
        """``call`` within the timeout; a cancellation from outside lets the next caller probe."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except asyncio.CancelledError:
            self.breaker.abandoned()
            raise

    async def _command(
        self, limiter: str, what: str, call: Callable[[], Awaitable[object]]
    ) -> bool:
        if not self.breaker.allow():
            return False
        try:
            await self._bounded(call())
        except Exception as exc:  # as in ``hit``: whatever broke, Redis did not answer
            self.breaker.failed()
            log.warning(
                f"rate limiter could not {what}: Redis did not answer",
                limiter=limiter,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        self.breaker.succeeded()
        return True

    def _failed(self, limiter: str, rate: Rate, reason: FailReason, exc: BaseException) -> Decision:
        self.breaker.failed()
        return self._fail_open(limiter, rate, reason, exc)

    def _fail_open(
        self, limiter: str, rate: Rate, reason: FailReason, exc: BaseException | None
    ) -> Decision:
        RATELIMIT_FAIL_OPEN.labels(limiter, reason).inc()
        RATELIMIT_DECISIONS.labels(limiter, "fail_open").inc()
        if exc is not None:
            # One line per failed attempt: with the breaker open, at most one per cooldown.
            log.warning(
                "rate limiter failing open: Redis did not decide",
                limiter=limiter,
                reason=reason,
                error=f"{type(exc).__name__}: {exc}",
                breaker_seconds=self.breaker.cooldown,
            )
        return Decision(
            limiter=limiter,
            allowed=True,
            limit=rate.limit,
            remaining=rate.limit,
            reset_ms=0,
            fail_open=True,
        )
