"""The sliding window against a real Valkey, and the pure parts (rates, client IPs, breaker)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from app.kit.ratelimit import (
    SLIDING_WINDOW_LUA,
    CircuitBreaker,
    Decision,
    Rate,
    RateLimiter,
    ScriptConnections,
    SlidingWindowScript,
    SyncSlidingWindow,
    client_address,
    create_limiter_redis,
    email_subject,
    ip_subject,
    parse_networks,
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


@pytest.mark.parametrize("subject", ["user:1", "ip:2001:db8::/64", "email:déjà-vu"])
def test_packed_commands_are_what_redis_py_would_send(subject: str):
    from redis.connection import Connection

    script = SlidingWindowScript()
    packed = script.packed("api", subject, Rate(100, 60))
    member = packed.rsplit(b"\r\n", 2)[-2]
    packer = Connection()
    key = window_key("api", subject)
    expected = packer.pack_command("EVALSHA", script.sha, 1, key, 100, 60000, member)
    assert packed == b"".join(expected)
    again = packer.pack_command("EVALSHA", script.sha, 1, key, 100, 60000, member, 1)
    assert script.resend(packed) == b"".join(again)
    assert script.load == b"".join(packer.pack_command("SCRIPT", "LOAD", SLIDING_WINDOW_LUA))


def test_a_decision_sent_again_is_counted_once(redis_url: str):
    """The first send ran but its answer was lost with the connection: sent again (marked as
    such) it is still admitted, and still one member — not refused, not counted twice."""
    import redis

    from app.kit.ratelimit import SyncScriptConnections

    client = redis.Redis.from_url(redis_url)
    connections = SyncScriptConnections(client)
    script = SlidingWindowScript()
    connections.call(script.load)
    rate = Rate(1, 60)
    subject = f"resend:{id(script)}"
    packed = script.packed("t", subject, rate)
    first = script.decision("t", rate, connections.call(packed))
    again = script.decision("t", rate, connections.call(script.resend(packed)))
    assert (first.allowed, first.remaining) == (True, 0)
    assert (again.allowed, again.remaining) == (True, 0)
    assert client.zcard(window_key("t", subject)) == 1
    # Unmarked, the same command would be a second request, and refused.
    assert not script.decision("t", rate, connections.call(packed)).allowed
    # A new decision is still refused, marked or not: the mark only vouches for its own member.
    other = script.packed("t", subject, rate)
    assert not script.decision("t", rate, connections.call(script.resend(other))).allowed
    connections.close()
    client.close()


async def test_connections_are_reused_and_bursts_do_not_stay_open(redis_url, raw):
    connections = ScriptConnections(aioredis.Redis.from_url(redis_url), max_idle=16)
    ping = b"*1\r\n$4\r\nPING\r\n"
    before = len(await raw.client_list())
    replies = await asyncio.gather(*(connections.call(ping) for _ in range(40)))
    assert replies == [b"PONG"] * 40
    assert connections.idle == 16  # the other 24 were closed
    for _ in range(5):  # one at a time: the same idle connection each time
        assert await connections.call(ping) == b"PONG"
    assert connections.idle == 16
    await connections.aclose()
    assert connections.idle == 0
    for _ in range(50):
        if len(await raw.client_list()) == before:
            break
        await asyncio.sleep(0.02)
    assert len(await raw.client_list()) == before


async def test_a_flood_waits_for_one_of_a_bounded_number_of_connections(redis_url):
    connections = ScriptConnections(aioredis.Redis.from_url(redis_url), max_connections=4)
    made = []
    factory = connections._connection_class

    def counted(**kwargs):
        made.append(factory(**kwargs))
        return made[-1]

    connections._connection_class = counted
    ping = b"*1\r\n$4\r\nPING\r\n"
    replies = await asyncio.gather(*(connections.call(ping) for _ in range(40)))
    assert replies == [b"PONG"] * 40
    assert len(made) == 4  # the other 36 waited their turn on those four
    assert connections.idle == 4
    await connections.aclose()


async def test_an_error_reply_keeps_the_connection_in_step(redis_url, raw):
    connections = ScriptConnections(aioredis.Redis.from_url(redis_url))
    with pytest.raises(aioredis.ResponseError):
        await connections.call(b"*1\r\n$7\r\nNOSUCHC\r\n")
    assert connections.idle == 1
    assert await connections.call(b"*1\r\n$4\r\nPING\r\n") == b"PONG"
    await connections.aclose()


def test_sync_limiter_decides_like_the_async_one(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.script_flush()  # the first call meets NOSCRIPT and loads the script
    limiter = SyncSlidingWindow(client)
    rate = Rate(2, 60)
    subject = f"sync:{id(limiter)}"
    first, second, third = (limiter.hit("t", subject, rate) for _ in range(3))
    assert (first.allowed, first.remaining) == (True, 1)
    assert (second.allowed, second.remaining) == (True, 0)
    assert not third.allowed
    assert 59_000 < third.reset_ms <= 60_000
    # The server closes the idle connection: the next decision reconnects rather than fails.
    (idle,) = limiter._connections._idle
    host, port = idle._sock.getsockname()[:2]
    assert client.client_kill(f"{host}:{port}")
    fourth = limiter.hit("t", subject, rate)
    assert (fourth.allowed, fourth.remaining) == (False, 0)
    limiter.close()
    client.close()


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


TRUSTED = parse_networks(["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # No trusted peer: the header is the client's own word and is ignored.
        ("198.51.100.7", ["1.2.3.4"], "198.51.100.7"),
        # Through our proxy: the address it saw.
        ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        # The client prepends a lie; our proxy appended the truth on the right.
        ("10.0.0.5", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
        # Two of our hops: skip both.
        ("10.0.0.5", ["203.0.113.9, 192.0.2.1"], "203.0.113.9"),
        # Several header lines are one list.
        ("10.0.0.5", ["1.1.1.1", "203.0.113.9, 10.9.9.9"], "203.0.113.9"),
        # Trusted peer, no header: the peer is the client.
        ("10.0.0.5", [], "10.0.0.5"),
        # Everything trusted: the leftmost is the best we know.
        ("10.0.0.5", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
        # Garbage stops the walk at the last hop we trust.
        ("10.0.0.5", ["203.0.113.9, garbage"], "10.0.0.5"),
        # Ports and IPv6 brackets.
        ("10.0.0.5", ["203.0.113.9:5555"], "203.0.113.9"),
        ("10.0.0.5", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("2001:db8:ffff::1", ["2001:db8:1::5"], "2001:db8:1::5"),
        ("::ffff:198.51.100.7", [], "198.51.100.7"),
    ],
)
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, TRUSTED) == ipaddress.ip_address(expected)


def test_client_address_without_trusted_proxies_ignores_the_header():
    assert client_address("10.0.0.5", ["203.0.113.9"], ()) == ipaddress.ip_address("10.0.0.5")
    assert client_address(None, ["203.0.113.9"], TRUSTED) is None


@given(
    peer=st.ip_addresses(v=4).filter(lambda a: not a.is_private),
    xff=st.lists(st.text(alphabet="0123456789.:, abcdef", max_size=40), max_size=3),
)
def test_an_untrusted_peer_cannot_choose_its_address(peer, xff):
    assert client_address(str(peer), xff, TRUSTED) == peer


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
