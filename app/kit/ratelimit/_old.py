"""Rate limits: exact sliding windows in Redis, one round trip per decision, failing open.

Each (limiter, subject) pair owns one sorted set of the requests it admitted, scored by the
time they were admitted. A decision is one Lua script (EVALSHA, re-sent on NOSCRIPT by
redis-py's ``Script``) that drops what has slid out of the window, counts what is left, admits
the request if the count is under the limit, and answers (allowed, remaining, reset) — all
atomically, so concurrent requests from many API pods never overshoot the limit. Refused
requests are not recorded: a client that keeps hammering still gets a slot back as soon as the
window slides past its oldest admitted request.

Time comes from the server (``TIME`` inside the script), not from the API pods: their clocks
skew, and one pod running 200 ms ahead would otherwise trim the others' requests early. Redis 7+
and Valkey replicate a script by its effects, so calling ``TIME`` before writing is allowed.

Keys are ``rl:{<limiter>:<subject>}``: the whole name is the cluster hash tag and a decision
touches exactly one key, so the script runs unchanged on Redis Cluster.

The limiter must never be the reason a request fails. It has connections of its own (no
retries; see "the limiter's connections" below for why it writes its command on them directly),
every call — connect, write, read — is bounded by ``ratelimit_timeout_ms``, and after a failure
a circuit breaker skips Redis for ``ratelimit_breaker_seconds`` before letting one probe through
(half-open). While Redis cannot decide, requests pass, a warning is logged and
``record_ratelimit_fail_open_total`` counts them.

A decision admitted by mistake can be taken back (``refund``: the request turned out not to be
the kind the limiter counts, e.g. a login whose password was right, where only failures count),
and a subject's window can be emptied (``forget``). Both are single idempotent commands, bounded
and breaker-guarded like a decision; when they fail, the window keeps a request too many.

Responses of a limited route carry ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset``. Reset is *delta seconds* (as in the IETF httpapi RateLimit header
draft), not an epoch time: the seconds until the window frees a slot, i.e. until the oldest
admitted request slides out. A 429 also carries ``Retry-After`` with the same number.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, get_args
from uuid import UUID

import redis
import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection as AsyncConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection as SyncConnection
from redis.exceptions import NoScriptError
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.errors import RateLimitError
from app.kit.metrics import RATELIMIT_DECISIONS, RATELIMIT_FAIL_OPEN
from app.settings import Settings

log = structlog.stdlib.get_logger("record.ratelimit")

# KEYS[1]: the subject's window. ARGV[1]: limit, ARGV[2]: window in ms, ARGV[3]: a member name
# unique to this decision (a per-process random prefix and a counter: two requests admitted in
# the same microsecond must stay two members, or the second would overwrite the first).
# ARGV[4], only when the same decision is sent again because the first send's answer was lost:
# '1' — then a member already there means the first send was admitted, and it still is.
# Scores are microseconds since the epoch: about 1.8e15, exact in a double (< 2^53).
#
# The answer is packed into ONE integer, because an integer is the cheapest reply for redis-py's
# pure-Python RESP parser (a three-element array costs four line reads; measured ~3 us of client
# CPU per decision, a tenth of a loopback round trip): refused -> -(reset_ms + 1);
# admitted -> remaining * 2^32 + reset_ms. Both parts are clamped so the sum stays below 2^53,
# where a Lua number (a double) is still an exact integer. See ``unpack_reply``.
SLIDING_WINDOW_LUA = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
local count = redis.call('ZCARD', KEYS[1])
local allowed
if ARGV[4] == '1' and redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  allowed = true  -- a re-sent decision whose first send was admitted (its answer was lost)
else
  allowed = count < limit
  if allowed then
    redis.call('ZADD', KEYS[1], now_us, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    count = count + 1
  end
end
local reset_us = window_us
if count > 1 or not allowed then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then
    reset_us = tonumber(oldest[2]) + window_us - now_us
  end
end
local reset_ms = math.min(math.max(math.ceil(reset_us / 1000), 0), 4294967295)
if not allowed then
  return -reset_ms - 1
end
return math.min(math.max(limit - count, 0), 2097151) * 4294967296 + reset_ms
"""
MAX_REMAINING = 2**21 - 1  # what the packed reply can carry; only limits above it are clamped


def resp_bulk(value: bytes) -> bytes:
    """One RESP bulk string: ``$<length>\\r\\n<bytes>\\r\\n``."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def resp_command(*parts: bytes) -> bytes:
    """A command as Redis reads it: an array of bulk strings (what redis-py's packer writes)."""
    return b"*%d\r\n" % len(parts) + b"".join(resp_bulk(part) for part in parts)


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

# Whom each limiter counts, as the seed document sets them.
Per = Literal["user", "org", "ip"]
DEFAULT_PER: Mapping[str, Per] = {
    "api": "user",
    "search": "user",
    "chat": "user",
    "upload": "org",
    "share": "org",
    "anonymous": "ip",
    "media": "ip",  # a shared recording's media: a player sends many range requests
    "signup": "ip",
    "share_page": "ip",  # GET /s/{id}, apart from its media
    "password_reset": "ip",
    # Every login request, right or wrong: each costs an argon2 check, and successful logins
    # give back what the failure limiters took.
    "login": "ip",
    # The login limiters count failed logins only, so they are applied by the login route
    # itself (app/auth/login_throttle.py), not as a dependency; login_failures_ip_email and
    # login_failures_email count per (IP, email) and per email, which no ``Per`` names.
    "login_failures_ip": "ip",
}

FailReason = Literal["timeout", "error", "breaker_open"]

STATE_KEY = "ratelimit"  # request.state attribute holding the decision to report in headers
SERVICES_KEY = "ratelimit"  # Services.extras key of the process's RateLimiter


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` requests per ``seconds``."""

    limit: int
    seconds: float
    # The script's ARGV[1:2] as RESP bulk strings, encoded once rather than on every decision.
    resp_args: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        args = resp_bulk(str(self.limit).encode()) + resp_bulk(str(self.window_ms).encode())
        object.__setattr__(self, "resp_args", args)

    @property
    def window_ms(self) -> int:
        return max(1, round(self.seconds * 1000))

    def __str__(self) -> str:
        return f"{self.limit}/{self.seconds:g}s"


def parse_rate(text: str) -> Rate:
    """``"<count>/<seconds>"`` as in the settings, e.g. ``"100/60"``. Bad values fail start-up."""
    count, sep, seconds = text.strip().partition("/")
    try:
        limit, window = int(count), float(seconds)
    except ValueError:
        limit, window = -1, 0.0
    # A window is at most 49 days: the packed reply carries reset_ms in 32 bits.
    if not sep or limit < 0 or not 0 < window <= 2**32 / 1000:
        raise ValueError(f"A rate limit is '<count>/<seconds>', like '100/60'; got {text!r}.")
    return Rate(limit, window)


def rates_from_settings(settings: Settings) -> dict[str, Rate]:
    return {name: parse_rate(getattr(settings, f"ratelimit_{name}")) for name in LIMITER_NAMES}


def window_key(limiter: str, subject: str, prefix: str = "") -> str:
    # The braces make the whole name the Redis Cluster hash tag: one key, one slot.
    return f"{prefix}rl:{{{limiter}:{subject}}}"


@dataclass(frozen=True, slots=True)
class Decision:
    limiter: str
    allowed: bool
    limit: int
    remaining: int
    reset_ms: int  # until the window frees a slot (for a refusal: until a retry can pass)
    fail_open: bool = False
    # Where an admitted request was recorded, so that ``RateLimiter.refund`` can take it back;
    # empty for refusals and fail-open decisions (nothing was recorded).
    subject: str = field(default="", repr=False, compare=False)
    member: bytes = field(default=b"", repr=False, compare=False)

    @property
    def reset_seconds(self) -> int:
        return max(0, math.ceil(self.reset_ms / 1000))

    @property
    def retry_after(self) -> int:
        return max(1, self.reset_seconds)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


def unpack_reply(reply: int) -> tuple[bool, int, int]:
    """(allowed, remaining, reset_ms) from the script's packed integer."""
    if reply < 0:
        return False, 0, -reply - 1
    return True, reply >> 32, reply & 0xFFFFFFFF


class SlidingWindowScript:
    """The EVALSHA of one decision, packed as the bytes Redis reads, with little client work.

    Everything but the key and the member is constant per rate, so it is encoded once; a
    decision formats two bulk strings into a template (redis-py's packer would encode all seven
    arguments every time).
    """

    def __init__(self, key_prefix: str = "") -> None:
        self.key_prefix = key_prefix  # REDIS_KEY_PREFIX
        self.sha = hashlib.sha1(SLIDING_WINDOW_LUA.encode(), usedforsecurity=False).hexdigest()
        # EVALSHA <sha> 1: the head of a seven-part command; key, limit, window, member follow.
        self._head = (
            b"*7\r\n" + resp_bulk(b"EVALSHA") + resp_bulk(self.sha.encode()) + resp_bulk(b"1")
        )
        self.load = resp_command(b"SCRIPT", b"LOAD", SLIDING_WINDOW_LUA.encode())
        # Member names unique across processes: a random per-process prefix and a counter.
        self._prefix = secrets.token_hex(8).encode() + b":"
        self._counter = itertools.count()

    def new_member(self) -> bytes:
        return b"%s%d" % (self._prefix, next(self._counter))

    def packed(self, limiter: str, subject: str, rate: Rate, member: bytes | None = None) -> bytes:
        key = window_key(limiter, subject, self.key_prefix).encode()
        if member is None:
            member = self.new_member()
        return b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
            self._head,
            len(key),
            key,
            rate.resp_args,
            len(member),
            member,
        )

    @staticmethod
    def resend(packed: bytes) -> bytes:
        """The same decision, marked as sent again (ARGV[4] = '1'): if its first send was
        admitted before the connection broke, the script answers admitted without adding a
        second member, rather than counting the request twice or refusing it."""
        assert packed.startswith(b"*7\r\n")
        return b"*8" + packed[2:] + b"$1\r\n1\r\n"

    @staticmethod
    def decision(
        limiter: str, rate: Rate, reply: int, subject: str = "", member: bytes = b""
    ) -> Decision:
        allowed, remaining, reset_ms = unpack_reply(reply)
        if not allowed:
            subject, member = "", b""  # a refusal records nothing to take back
        return Decision(limiter, allowed, rate.limit, remaining, reset_ms, False, subject, member)


# --- the limiter's connections ------------------------------------------------------------------
#
# A decision writes one EVALSHA and reads one integer. redis-py's command path around that costs
# about as much client CPU as the round trip's own system calls: every command checks a
# connection out of the pool under a lock, probes it for stray bytes with a zero-timeout read (the
# guard against a connection handed back with a reply unread), and with a socket timeout set the
# asyncio client wraps each write in ``asyncio.wait_for`` (a task per call on Python 3.11).
# Measured on one client thread against a loopback Valkey: PING through ``execute_command`` about
# 8,300/s, the same PING written and read directly on a connection about 11,700/s.
#
# The probe is needless when no connection can go back with a reply unread, and that is what the
# two classes below guarantee: a connection returns to the idle list only after its reply was read
# whole (an error reply such as NOSCRIPT is whole too); any other exception, a timeout or a
# cancellation between writing and reading drops it (redis-py's read also disconnects on those;
# the write and everything around it are ours to guard). The connections themselves are redis-py's,
# made with the client's settings (URL, password, TLS, parser): only the checkout is ours.

# Kept open per process: as many as a worker's usual peak of concurrent requests, so steady
# load reuses connections rather than opening and closing them; a rarer burst above it opens
# more and closes them after.
IDLE_CONNECTIONS = 64
# At most this many at once per process: a flood of requests waits for a connection (within the
# decision's timeout, then fails open) instead of opening one each until Redis's maxclients
# turns everyone else away too.
MAX_CONNECTIONS = 256


class ScriptConnections:
    """The async limiter's connections. Calls are bounded by the caller's ``asyncio.timeout``."""

    def __init__(
        self,
        client: Redis,
        *,
        max_idle: int = IDLE_CONNECTIONS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        # No socket timeout: the caller's asyncio.timeout bounds connect, write and read at once,
        # and redis-py would pay a task per write (asyncio.wait_for) to enforce its own.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._idle: list[AsyncConnection] = []
        self._max_idle = min(max_idle, max_connections)
        self._slots = asyncio.Semaphore(max_connections)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def call(self, packed: bytes, resend: Callable[[bytes], bytes] | None = None) -> Any:
        """Write ``packed``, read its reply.

        A connection that sat idle may have been closed under us (Redis restarted or failed
        over, an idle timeout, a proxy); redis-py's checkout probe would have reconnected it.
        Here its write or read fails with ConnectionError instead: then the other idle ones are
        dropped too (likely closed alike) and the command goes once more on a new connection —
        as ``resend(packed)`` when given, the form of the command that is safe to run twice
        (the first send may have run before the connection broke).
        """
        async with self._slots:
            if self._idle:
                try:
                    return await self._call_on(self._idle.pop(), packed)
                except redis.ConnectionError:
                    await self._drop_idle()
                    if resend is not None:
                        packed = resend(packed)
            return await self._call_on(self._connection_class(**self._kwargs), packed)

    async def _call_on(self, conn: AsyncConnection, packed: bytes) -> Any:
        try:
            await conn.send_packed_command((packed,), check_health=False)
            reply = await conn.read_response()
        except redis.ResponseError:  # an error reply, read whole: the connection is in step
            await self._release(conn)
            raise
        except BaseException:  # failed, timed out or cancelled with the reply maybe in flight
            await conn.disconnect(nowait=True)
            raise
        await self._release(conn)
        return reply

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)

    async def _release(self, conn: AsyncConnection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            await conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        await self._drop_idle()


class SyncScriptConnections:
    """The same for a synchronous client (one thread); the socket timeout is the client's."""

    def __init__(self, client: redis.Redis, *, max_idle: int = IDLE_CONNECTIONS) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._idle: list[SyncConnection] = []
        self._max_idle = max_idle

    def call(self, packed: bytes, resend: Callable[[bytes], bytes] | None = None) -> Any:
        """As ``ScriptConnections.call``: once more on a new connection if an idle one failed."""
        if self._idle:
            try:
                return self._call_on(self._idle.pop(), packed)
            except redis.ConnectionError:
                self.close()
                if resend is not None:
                    packed = resend(packed)
        return self._call_on(self._connection_class(**self._kwargs), packed)

    def _call_on(self, conn: SyncConnection, packed: bytes) -> Any:
        try:
            conn.send_packed_command((packed,), check_health=False)  # type: ignore[no-untyped-call]
            reply = conn.read_response()
        except redis.ResponseError:
            self._release(conn)
            raise
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        self._release(conn)
        return reply

    def _release(self, conn: SyncConnection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()  # type: ignore[no-untyped-call]


class CircuitBreaker:
    """Closed → (failure) open for ``cooldown`` s → half-open: one probe; it closes or reopens.

    One per process and Redis client, shared by all limiters: they fail together. No lock: it
    lives on one event loop and never awaits between checking and changing its state.
    """

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self.cooldown:
            return False
        self._probing = True  # half-open: this caller is the one probe
        return True

    def succeeded(self) -> bool:
        """Record a success; True when it closed an open breaker."""
        was_open = self._opened_at is not None
        self._opened_at = None
        self._probing = False
        return was_open

    def failed(self) -> None:
        self._opened_at = self._clock()
        self._probing = False

    def abandoned(self) -> None:
        """The call was cancelled before it could tell: let the next caller probe."""
        self._probing = False


def create_limiter_redis(url: str, timeout_ms: int) -> Redis:
    """The limiter's client, whose settings its connections are made with (``ScriptConnections``):
    its own, because a timeout in tens of ms would be wrong for everything else, and without
    retries, which would only double the time a request waits for a Redis that is not answering."""
    seconds = timeout_ms / 1000
    return Redis.from_url(
        url,
        socket_timeout=seconds,
        socket_connect_timeout=seconds,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )


class RateLimiter:
    """The process's limiters (by name) over one Redis client, with timeout and breaker."""

    def __init__(
        self,
        client: Redis,
        rates: Mapping[str, Rate],
        *,
        timeout_ms: int,
        breaker_seconds: float,
        trusted_proxies: Iterable[str] = (),
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        key_prefix: str = "",
    ) -> None:
        self.client = client
        self.rates = dict(rates)
        self.timeout = timeout_ms / 1000
        self.breaker = CircuitBreaker(breaker_seconds, clock)
        self.trusted_proxies = parse_networks(trusted_proxies)
        self.enabled = enabled
        self._script = SlidingWindowScript(key_prefix)
        self._connections = ScriptConnections(client)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            create_limiter_redis(settings.redis_url, settings.ratelimit_timeout_ms),
            rates_from_settings(settings),
            timeout_ms=settings.ratelimit_timeout_ms,
            breaker_seconds=settings.ratelimit_breaker_seconds,
            trusted_proxies=settings.trusted_proxies,
            enabled=settings.ratelimit_enabled,
            key_prefix=settings.redis_key_prefix,
        )

    async def aclose(self) -> None:
        await self._connections.aclose()
        await self.client.aclose()

    async def hit(self, limiter: str, subject: str) -> Decision:
        """Count one request of ``subject`` against ``limiter``; admitted or not, say so.

        Never raises for Redis trouble: that is a fail-open decision (allowed, with
        ``fail_open=True``).
        """
        rate = self.rates[limiter]
        if not self.breaker.allow():
            return self._fail_open(limiter, rate, "breaker_open", None)
        member = self._script.new_member()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._evalsha(self._script.packed(limiter, subject, rate, member))
        except (TimeoutError, redis.TimeoutError) as exc:  # ours, or the socket's
            return self._failed(limiter, rate, "timeout", exc)
        # Not only redis-py's errors: a connection broken while Valkey restarts can raise what
        # redis-py does not wrap (RuntimeError, EOFError), and the limiter fails open on all.
        except Exception as exc:
            return self._failed(limiter, rate, "error", exc)
        except BaseException:
            self.breaker.abandoned()
            raise
        if self.breaker.succeeded():
            log.info("rate limiter recovered: Redis answers again", limiter=limiter)
        decision = self._script.decision(limiter, rate, reply, subject, member)
        RATELIMIT_DECISIONS.labels(limiter, "allowed" if decision.allowed else "refused").inc()
        return decision

    async def refund(self, decision: Decision) -> bool:
        """Take back the request ``decision`` admitted (idempotent). False when there was
        nothing to take back or Redis did not answer (then the window keeps it)."""
        if not decision.member:
            return False
        key = window_key(decision.limiter, decision.subject, self._script.key_prefix).encode()
        command = resp_command(b"ZREM", key, decision.member)
        return await self._command(decision.limiter, command, "refund")

    async def forget(self, limiter: str, subject: str) -> bool:
        """Empty ``subject``'s window of ``limiter``. False when Redis did not answer."""
        key = window_key(limiter, subject, self._script.key_prefix).encode()
        command = resp_command(b"DEL", key)
        return await self._command(limiter, command, "forget")

    async def _command(self, limiter: str, packed: bytes, what: str) -> bool:
        # Idempotent commands only: a lost answer sends the same bytes once more.
        if not self.breaker.allow():
            return False
        try:
            async with asyncio.timeout(self.timeout):
                await self._connections.call(packed)
        except Exception as exc:  # as in ``hit``: whatever broke, Redis did not answer
            self.breaker.failed()
            log.warning(
                f"rate limiter could not {what}: Redis did not answer",
                limiter=limiter,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        except BaseException:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        return True

    async def _evalsha(self, packed: bytes) -> int:
        resend = self._script.resend
        try:
            reply: int = await self._connections.call(packed, resend)
        except NoScriptError:  # a restarted or flushed Redis: load it, then the same again
            await self._connections.call(self._script.load)
            reply = await self._connections.call(resend(packed))
        return reply

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


class SyncSlidingWindow:
    """The same script and connections on a synchronous client, for the benchmark and scripts
    (no timeout of its own beyond the client's socket timeout, no breaker)."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = SlidingWindowScript()
        self._connections = SyncScriptConnections(client)

    def hit(self, limiter: str, subject: str, rate: Rate) -> Decision:
        packed = self._script.packed(limiter, subject, rate)
        resend = self._script.resend
        try:
            reply: int = self._connections.call(packed, resend)
        except NoScriptError:
            self._connections.call(self._script.load)
            reply = self._connections.call(resend(packed))
        return self._script.decision(limiter, rate, reply)

    def close(self) -> None:
        self._connections.close()


# --- who is asking --------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries, each an IP or a CIDR."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443" (RFC 7239 style)
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.5:51234"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> Address | None:
    """The client's address: the peer's, unless the peer is a trusted proxy.

    Then ``X-Forwarded-For`` is read from the right (each proxy appends the address it saw),
    skipping our own trusted hops; the first untrusted address is the client. Anything left
    of it was written by the client and proves nothing. An entry that is not an address
    stops the walk at the last hop we trust: that proxy is the best we know.
    """
    address = _address(peer) if peer else None
    if address is None or not trusted or not _trusted(address, trusted):
        return address
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        candidate = _address(hop)
        if candidate is None:
            return address
        address = candidate
        if not _trusted(address, trusted):
            return address
    return address  # every hop was ours: the leftmost is the best we know


def ip_subject(address: Address | None) -> str:
    """The limiter subject of an address. IPv6 clients count by /64: one host usually holds a
    whole /64 and could otherwise rotate through its addresses to escape the limit."""
    if address is None:
        return "ip:unknown"
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
        return f"ip:{network}"
    return f"ip:{address}"


def request_client_ip(request: Request, trusted: Sequence[Network]) -> Address | None:
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.getlist("x-forwarded-for"), trusted)


def email_subject(email: str) -> str:
    # Hashed: Redis keys show up in MONITOR, SCAN and memory reports; addresses should not.
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"email:{digest}"


# --- FastAPI side ---------------------------------------------------------------------------


class Caller(Protocol):
    """What the limiter needs of ``request.state.principal`` (kit never imports a domain)."""

    @property
    def user_id(self) -> UUID | None: ...

    @property
    def org_id(self) -> UUID | None: ...

    @property
    def key_id(self) -> UUID | None: ...


def caller_subject(caller: Caller, per: Literal["user", "org"]) -> str:
    if per == "org" and caller.org_id is not None:
        return f"org:{caller.org_id}"
    if caller.user_id is not None:
        return f"user:{caller.user_id}"
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    raise RuntimeError("rate limit: the caller has neither a user, an org nor a key")


def request_limiter(request: Request) -> RateLimiter | None:
    services = getattr(request.app.state, "services", None)
    limiter = services.extras.get(SERVICES_KEY) if services is not None else None
    return limiter if isinstance(limiter, RateLimiter) and limiter.enabled else None


def remember(request: Request, decision: Decision) -> None:
    """Keep the tightest decision of this request for the response headers."""
    current: Decision | None = getattr(request.state, STATE_KEY, None)
    if current is not None and not current.allowed:
        return  # a refusal is what the client must see
    tighter = current is None or (decision.remaining, -decision.reset_ms) < (
        current.remaining,
        -current.reset_ms,
    )
    if not decision.allowed or tighter:
        setattr(request.state, STATE_KEY, decision)


async def enforce(request: Request, limiter: str, subject: str) -> Decision | None:
    """Count this request; raise ``RateLimitError`` (429) when it is over the limit.

    None when rate limiting is off. Fail-open decisions pass and set no headers: the numbers
    are unknown, and made-up ones would mislead a client that paces itself by them.
    """
    limiters = request_limiter(request)
    if limiters is None:
        return None
    decision = await limiters.hit(limiter, subject)
    if decision.fail_open:
        return decision
    remember(request, decision)
    if not decision.allowed:
        rate = limiters.rates[limiter]
        raise RateLimitError(
            f"Too many requests: the '{limiter}' limit is {rate}. "
            f"Try again in {decision.retry_after} s.",
            retry_after=decision.retry_after,
            headers=decision.headers(),
        )
    return decision


async def refund(request: Request, decision: Decision | None) -> None:
    """Take back what ``decision`` counted (see ``RateLimiter.refund``); the response headers
    then show the slot as free again."""
    limiters = request_limiter(request)
    if limiters is None or decision is None or not await limiters.refund(decision):
        return
    current: Decision | None = getattr(request.state, STATE_KEY, None)
    if current is decision:
        remaining = min(decision.limit, decision.remaining + 1)
        setattr(request.state, STATE_KEY, replace(decision, remaining=remaining))


async def enforce_caller(
    request: Request, limiter: str, caller: Caller, per: Literal["user", "org"] = "user"
) -> Decision | None:
    return await enforce(request, limiter, caller_subject(caller, per))


async def enforce_ip(request: Request, limiter: str = "anonymous") -> Decision | None:
    limiters = request_limiter(request)
    if limiters is None:
        return None
    address = request_client_ip(request, limiters.trusted_proxies)
    return await enforce(request, limiter, ip_subject(address))


def rate_limit(
    limiter: LimiterName, *, per: Per | None = None
) -> Callable[[Request], Awaitable[Decision | None]]:
    """A dependency counting the request against ``limiter``.

    Per user or org, it reads the caller from ``request.state.principal``, which
    ``authenticate`` sets: declare it after the route's principal parameter, e.g.
    ``async def search(body: SearchIn, principal: Searcher, _: SearchLimit)`` with
    ``SearchLimit = Annotated[Decision | None, Depends(rate_limit("search"))]``.
    Per IP (``anonymous``, ``signup``, ...), it needs nothing else.
    """
    if per is None and limiter not in DEFAULT_PER:
        raise ValueError(f"The {limiter!r} limiter is not for rate_limit(): it counts no Per.")
    scope = per or DEFAULT_PER[limiter]

    async def dependency(request: Request) -> Decision | None:
        if scope == "ip":
            return await enforce_ip(request, limiter)
        caller: Caller | None = getattr(request.state, "principal", None)
        if caller is None:
            raise RuntimeError(
                f"rate_limit({limiter!r}) ran before authentication: declare it after the "
                "route's principal dependency"
            )
        return await enforce_caller(request, limiter, caller, scope)

    dependency.__name__ = f"rate_limit_{limiter}"
    return dependency


class RateLimitHeadersMiddleware:
    """Adds X-RateLimit-* to the response of any request a limiter decided.

    The decision is on ``request.state``, not on an injected ``Response``: FastAPI drops the
    headers of an injected ``Response`` when the route returns its own (a 204, a stream) or
    raises. Pure ASGI so it neither buffers server-sent events nor breaks context variables.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # request.state is scope["state"]. Servers should give each request a copy of the
        # lifespan state, but not all do (asgi-lifespan hands every request the same dict), and
        # a decision must never leak into another request's headers: so copy it here, and
        # hold this request's dict whatever inner layers do to the scope.
        state: dict[str, Any] = dict(scope.get("state") or {})
        state.pop(STATE_KEY, None)
        scope["state"] = state

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = state.get(STATE_KEY)
                if isinstance(decision, Decision):
                    headers = MutableHeaders(scope=message)
                    for name, value in decision.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_wrapper)
