"""Fail open, for real: our own Valkey, killed, frozen and restarted on the same port."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager
from prometheus_client import REGISTRY

from app.devstack.servers import ValkeyServer
from app.kit.ratelimit import RateLimiter, create_limiter_redis, parse_rate
from app.kit.ratelimit import limiter as limiter_module
from tests.app.conftest import make_tenant


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OwnValkey:
    """A Valkey only this test uses, so it can stop it without hurting the others."""

    server: ValkeyServer
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.server.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[OwnValkey]:
    valkey = OwnValkey(ValkeyServer(tmp_path / "valkey", _free_port(), secrets.token_urlsafe(12)))
    valkey.start()
    try:
        yield valkey
    finally:
        if valkey.proc is not None:
            valkey.thaw()
            valkey.kill()


class LogRecorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(limiter_module, "log", recorder)
    return recorder


def fail_open_count(limiter: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "record_ratelimit_fail_open_total", {"limiter": limiter, "reason": reason}
    )
    return value or 0.0


def decisions_count(limiter: str, decision: str) -> float:
    value = REGISTRY.get_sample_value(
        "record_ratelimit_decisions_total", {"limiter": limiter, "decision": decision}
    )
    return value or 0.0


@pytest.fixture
async def limiter(own_valkey: OwnValkey) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(
        create_limiter_redis(own_valkey.url, 50),
        {"fo": parse_rate("2/60")},
        timeout_ms=50,  # the production default
        breaker_seconds=0.5,
    )
    yield limiter
    await limiter.aclose()


async def test_redis_down_fails_open_and_the_breaker_closes_when_it_returns(
    own_valkey, limiter, logs
):
    before = {r: fail_open_count("fo", r) for r in ("error", "breaker_open", "timeout")}
    fail_open_before = decisions_count("fo", "fail_open")
    assert not (await limiter.hit("fo", "user:1")).fail_open

    own_valkey.kill()
    down = await limiter.hit("fo", "user:1")
    assert down.allowed
    assert down.fail_open
    assert limiter.breaker.is_open
    assert fail_open_count("fo", "error") == before["error"] + 1
    assert [(level, kw["reason"]) for level, _, kw in logs.lines] == [("warning", "error")]

    # While the breaker is open, Redis is not even tried: fast, and no new warning.
    started = time.perf_counter()
    skipped = await asyncio.gather(*(limiter.hit("fo", "user:1") for _ in range(20)))
    assert time.perf_counter() - started < 0.05
    assert all(d.allowed and d.fail_open for d in skipped)
    assert fail_open_count("fo", "breaker_open") == before["breaker_open"] + 20
    assert decisions_count("fo", "fail_open") == fail_open_before + 21
    assert len(logs.lines) == 1

    own_valkey.start()  # same port, same data directory
    await asyncio.sleep(0.55)  # the cooldown passes: the next call is the probe
    back = await limiter.hit("fo", "user:1")
    assert back.allowed
    assert not back.fail_open
    assert back.remaining == 0  # the window survived the restart (append-only file)
    assert not limiter.breaker.is_open
    assert logs.lines[-1][0] == "info"
    refused = await limiter.hit("fo", "user:1")
    assert not refused.allowed
    assert not refused.fail_open


async def test_a_probe_that_fails_reopens_the_breaker(own_valkey, limiter, logs):
    own_valkey.kill()
    assert (await limiter.hit("fo", "user:2")).fail_open
    await asyncio.sleep(0.55)
    assert (await limiter.hit("fo", "user:2")).fail_open  # the probe, still down
    assert limiter.breaker.is_open
    assert len([line for line in logs.lines if line[0] == "warning"]) == 2


async def test_redis_too_slow_fails_open_within_the_timeout(own_valkey, limiter, logs):
    assert not (await limiter.hit("fo", "user:3")).fail_open  # connection open and warm
    before = fail_open_count("fo", "timeout")
    own_valkey.freeze()  # up but not answering: the slow case
    try:
        started = time.perf_counter()
        decision = await limiter.hit("fo", "user:3")
        elapsed = time.perf_counter() - started
    finally:
        own_valkey.thaw()
    assert decision.allowed
    assert decision.fail_open
    assert elapsed < 0.4  # 50 ms timeout; generous for a busy shared machine
    assert fail_open_count("fo", "timeout") == before + 1
    assert logs.lines[0][2]["reason"] == "timeout"
    assert limiter.breaker.is_open


async def test_idle_connections_closed_by_a_restart_do_not_fail_the_next_decision(
    own_valkey, limiter, logs
):
    """redis-py's pool probes a pooled connection before handing it out and reconnects a closed
    one: a decision after a restart neither fails open nor is sent twice."""
    first = await asyncio.gather(*(limiter.hit("fo", f"burst:{n}") for n in range(8)))
    assert not any(d.fail_open for d in first)
    raw = redis.Redis.from_url(own_valkey.url)
    named = [c for c in raw.client_list() if c["name"] == "record-ratelimit"]
    assert len(named) > 1  # several idle connections, all about to go stale
    raw.close()
    own_valkey.kill()
    own_valkey.start()  # same port and data: every idle connection is now closed
    # A server's event loop runs between the restart and the next request, and reads the
    # closed sockets' EOF; the pool's check-out probe then sees them closed.
    await asyncio.sleep(0.05)
    again = await limiter.hit("fo", "burst:0")
    assert not again.fail_open
    assert (again.allowed, again.remaining) == (True, 0)  # counted once, before and after
    assert not limiter.breaker.is_open
    assert logs.lines == []


async def test_a_reply_that_arrives_after_the_timeout_is_never_read_as_another(own_valkey, limiter):
    """The limiter writes a command and gives up at 50 ms; the reply comes later. Were that
    connection reused, the next decision would read the stale reply as its own."""
    assert (await limiter.hit("fo", "user:4")).remaining == 1
    own_valkey.freeze()
    try:
        assert (await limiter.hit("fo", "user:4")).fail_open  # written, never answered in time
    finally:
        own_valkey.thaw()
    await asyncio.sleep(0.55)  # the breaker lets the next call through
    fresh = await limiter.hit("fo", "user:5")
    assert not fresh.fail_open
    # user:4's late reply would say remaining 0; a fresh subject's own reply says 1.
    assert (fresh.allowed, fresh.remaining) == (True, 1)


async def test_api_requests_pass_while_redis_is_down(own_valkey, settings):
    from app.main import create_app

    application = create_app(
        settings.model_copy(update={"redis_url": own_valkey.url, "ratelimit_api": "1/60"})
    )
    async with LifespanManager(application) as manager:
        await application.state.services.db.pool.wait(timeout=10)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            tenant = await make_tenant(client)
            own_valkey.kill()
            for _ in range(3):  # over the limit of 1, yet all pass
                response = await client.get("/api/recordings", headers=tenant.auth())
                assert response.status_code == 200
                # Fail-open responses carry no made-up numbers.
                assert "x-ratelimit-remaining" not in response.headers
