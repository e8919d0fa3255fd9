"""The sliding window against a real Valkey, and the pure parts (rates, IP subjects, breaker)."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from app.kit.ratelimit import (
    CircuitBreaker,
    Decision,
    Rate,
    RateLimiter,
    create_limiter_redis,
    email_subject,
    ip_subject,
    parse_address,
    parse_rate,
    unpack_reply,
    window_key,
)


async def make_limiter(redis_url: str, **rates: str) -> RateLimiter:
    return RateLimiter(
        create_limiter_redis(redis_url, 500),
        {name: parse_rate(text) for name, text in rates.items()},
        timeout_ms=500,  # the shared test machine is busy; fail-open tests use the real 50 ms
        breaker_seconds=5,
    )


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# --- the window -------------------------------------------------------------------------------


async def test_exactly_limit_of_40_concurrent_requests_pass(redis_url, raw):
    limiter = await make_limiter(redis_url, burst="10/2")
    try:
        decisions = await asyncio.gather(*(limiter.hit("burst", "user:1") for _ in range(40)))
        admitted = [d for d in decisions if d.allowed]
        refused = [d for d in decisions if not d.allowed]
        assert len(admitted) == 10
        assert sorted(d.remaining for d in admitted) == list(range(10))
        assert not any(d.fail_open for d in decisions)
        assert all(d.remaining == 0 and 0 < d.reset_ms <= 2000 for d in refused)
        assert await raw.zcard(window_key("burst", "user:1")) == 10

        # The window slides: once the oldest admissions are 2 s old, slots free up again, and
        # the expired members are trimmed from the set by the next decision.
        await asyncio.sleep(max(d.reset_ms for d in refused) / 1000 + 0.05)
        again = await limiter.hit("burst", "user:1")
        assert again.allowed
        assert again.remaining == 9
        assert await raw.zcard(window_key("burst", "user:1")) == 1
        assert 0 < await raw.pttl(window_key("burst", "user:1")) <= 2000
    finally:
        await limiter.aclose()


async def test_window_slides_rather_than_resetting(redis_url, raw):
    """Requests leave the window one by one, each `window` after it was admitted."""
    limiter = await make_limiter(redis_url, slide="4/1.5")
    key = window_key("slide", "user:2")
    try:
        first = await asyncio.gather(*(limiter.hit("slide", "user:2") for _ in range(2)))
        await asyncio.sleep(0.75)
        second = await asyncio.gather(*(limiter.hit("slide", "user:2") for _ in range(2)))
        assert all(d.allowed for d in (*first, *second))
        full = await limiter.hit("slide", "user:2")
        assert not full.allowed
        # Reset says when the *oldest* admission slides out, not when the newest does.
        assert full.reset_ms <= 1500 - 700

        await asyncio.sleep(full.reset_ms / 1000 + 0.05)  # the first two have slid out
        decisions = await asyncio.gather(*(limiter.hit("slide", "user:2") for _ in range(3)))
        assert [d.allowed for d in decisions].count(True) == 2
        assert await raw.zcard(key) == 4  # two trimmed, two kept, two added
    finally:
        await limiter.aclose()


async def test_subjects_and_limiters_have_their_own_windows(redis_url):
    limiter = await make_limiter(redis_url, api="1/60", search="1/60")
    try:
        assert (await limiter.hit("api", "user:a")).allowed
        assert not (await limiter.hit("api", "user:a")).allowed
        assert (await limiter.hit("api", "user:b")).allowed
        assert (await limiter.hit("search", "user:a")).allowed
    finally:
        await limiter.aclose()


async def test_script_is_reloaded_after_script_flush(redis_url, raw):
    limiter = await make_limiter(redis_url, api="5/60")
    try:
        assert (await limiter.hit("api", "user:1")).remaining == 4
        await raw.script_flush()  # as after a Redis restart or failover
        decision = await limiter.hit("api", "user:1")
        assert decision.allowed
        assert not decision.fail_open
        assert decision.remaining == 3
    finally:
        await limiter.aclose()


async def test_a_zero_limit_refuses_everything(redis_url):
    limiter = await make_limiter(redis_url, closed="0/60")
    try:
        decision = await limiter.hit("closed", "user:1")
        assert not decision.allowed
        assert decision.reset_ms == 60_000
        assert decision.retry_after == 60
    finally:
        await limiter.aclose()


async def test_a_refund_takes_back_exactly_the_request_it_names(redis_url, raw):
    limiter = await make_limiter(redis_url, fails="2/60")
    key = window_key("fails", "ip:1|email:x")
    try:
        kept = await limiter.hit("fails", "ip:1|email:x")
        taken_back = await limiter.hit("fails", "ip:1|email:x")
        assert await raw.zcard(key) == 2
        assert await limiter.refund(taken_back)
        assert await raw.zscore(key, kept.member) is not None
        assert await raw.zcard(key) == 1
        assert await limiter.refund(taken_back)  # idempotent: nothing more is taken
        assert await raw.zcard(key) == 1
        # A refusal recorded nothing and has nothing to give back.
        assert (await limiter.hit("fails", "ip:1|email:x")).allowed
        refused = await limiter.hit("fails", "ip:1|email:x")
        assert not refused.allowed
        assert not await limiter.refund(refused)
        assert await raw.zcard(key) == 2
        assert await limiter.forget("fails", "ip:1|email:x")
        assert await raw.exists(key) == 0
        assert (await limiter.hit("fails", "ip:1|email:x")).remaining == 1
    finally:
        await limiter.aclose()


async def test_refund_and_forget_without_redis_just_say_no():
    limiter = RateLimiter(
        create_limiter_redis("redis://127.0.0.1:1/0", 50),
        {"fails": parse_rate("2/60")},
        timeout_ms=50,
        breaker_seconds=60,
    )
    try:
        decision = Decision("fails", True, 2, 1, 60_000, subject="ip:1", member=b"m:1")
        assert not await limiter.refund(decision)
        assert limiter.breaker.is_open
        assert not await limiter.forget("fails", "ip:1")  # the breaker skips Redis
        assert (await limiter.hit("fails", "ip:1")).fail_open
    finally:
        await limiter.aclose()


async def test_a_flood_waits_for_one_of_a_bounded_number_of_connections(redis_url, raw):
    """Decisions share redis-py's blocking pool: 40 at once on 4 connections wait their turn
    (within the timeout) rather than opening 40."""
    name = f"flood-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(
        create_limiter_redis(redis_url, 500, max_connections=4, client_name=name),
        {"flood": parse_rate("1000/60")},
        timeout_ms=2000,  # the 40 queue behind each other on a busy machine
        breaker_seconds=5,
    )
    try:
        decisions = await asyncio.gather(*(limiter.hit("flood", "user:1") for _ in range(40)))
        assert all(d.allowed and not d.fail_open for d in decisions)
        assert sorted(d.remaining for d in decisions) == list(range(960, 1000))
        clients = [c for c in await raw.client_list() if c["name"] == name]
        assert 1 <= len(clients) <= 4
    finally:
        await limiter.aclose()


def test_keys_are_one_cluster_hash_tag():
    key = window_key("api", "user:42")
    assert key == "rl:{api:user:42}"
    assert key.count("{") == key.count("}") == 1


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [("100/60", Rate(100, 60)), (" 5/3600 ", Rate(5, 3600)), ("3/1.5", Rate(3, 1.5))],
)
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["100", "100/0", "-1/60", "a/60", "10/b", "10/inf", "10/nan", "1/9e9", ""]
)
def test_parse_rate_refuses_nonsense(text):
    with pytest.raises(ValueError, match="count>/<seconds"):
        parse_rate(text)


@given(
    allowed=st.booleans(),
    remaining=st.integers(0, 2**21 - 1),
    reset_ms=st.integers(0, 2**32 - 1),
)
def test_packed_reply_round_trips(allowed, remaining, reset_ms):
    # The same packing as the Lua script's last lines.
    reply = remaining * 2**32 + reset_ms if allowed else -reset_ms - 1
    assert reply < 2**53  # exact in a Lua number
    assert unpack_reply(reply) == (allowed, remaining if allowed else 0, reset_ms)


def test_decision_headers_use_delta_seconds():
    decision = Decision("api", False, 100, 0, 1_001)
    assert decision.headers() == {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2",
    }
    assert decision.retry_after == 2
    assert Decision("api", False, 1, 0, 0).retry_after == 1  # never "retry after 0 s"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        # A dual-stack socket reports IPv4 clients so: the same window as plain IPv4.
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_parse_address(host, expected):
    assert parse_address(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", [None, "", "testclient", "unix:/run/app.sock"])
def test_a_host_that_is_no_address_is_unknown(host):
    assert parse_address(host) is None
    assert ip_subject(parse_address(host)) == "ip:unknown"


def test_ipv6_clients_count_per_64():
    one = ipaddress.ip_address("2001:db8:1:2::1")
    other = ipaddress.ip_address("2001:db8:1:2:ffff::9")
    assert ip_subject(one) == ip_subject(other) == "ip:2001:db8:1:2::/64"
    assert ip_subject(ipaddress.ip_address("203.0.113.9")) == "ip:203.0.113.9"
    assert ip_subject(None) == "ip:unknown"


def test_email_subject_hides_the_address_and_ignores_case():
    subject = email_subject("Ada@Example.com ")
    assert subject == email_subject("ada@example.com")
    assert "ada" not in subject


def test_breaker_opens_then_lets_one_probe_through():
    now = [100.0]
    breaker = CircuitBreaker(5, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failed()
    assert breaker.is_open
    assert not breaker.allow()
    now[0] += 5
    assert breaker.allow()  # half-open: the probe
    assert not breaker.allow()  # only one at a time
    breaker.failed()  # the probe failed: open for another cooldown
    assert not breaker.allow()
    now[0] += 5
    assert breaker.allow()
    assert breaker.succeeded()  # closed again
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.succeeded()


def test_a_cancelled_probe_does_not_wedge_the_breaker():
    now = [0.0]
    breaker = CircuitBreaker(1, clock=lambda: now[0])
    breaker.failed()
    now[0] = 2
    assert breaker.allow()
    breaker.abandoned()
    assert breaker.allow()
