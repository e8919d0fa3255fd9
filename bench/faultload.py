"""Closed-loop HTTP load for the fault scenarios (``bench/faults.py`` and
``tests/reliability``): virtual users that each send one request after another, every answer
recorded with when it started, how long it took and what it was.

In-process (an ``httpx.AsyncClient``, usually over the ASGI app) rather than k6: a fault
scenario needs the load, the fault and the assertions on one clock, and to stop and start
servers between them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

Request = Callable[[], Awaitable[httpx.Response]]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds from the load's start to the request's start
    elapsed: float
    status: int  # 0: no response (the client gave up or the connection failed)
    content_type: str = ""
    retry_after: str | None = None
    error: str = ""
    path: str = ""

    @property
    def ended(self) -> float:
        return self.at + self.elapsed


@dataclass
class HttpLoad:
    """``users`` virtual users, each calling ``request`` in a loop (``think`` seconds apart)
    until stopped; ``timeout`` bounds each request from outside, so a hung one is a sample
    (status 0) instead of a stuck user."""

    request: Request
    users: int = 10
    think: float = 0.0
    timeout: float = 30.0
    samples: list[Sample] = field(default_factory=list)
    _started: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.perf_counter() - self._started

    async def _user(self) -> None:
        while not self._stop.is_set():
            at = self.now()
            try:
                async with asyncio.timeout(self.timeout):
                    response = await self.request()
            except (TimeoutError, httpx.HTTPError) as exc:
                self.samples.append(Sample(at, self.now() - at, 0, error=type(exc).__name__))
            else:
                self.samples.append(
                    Sample(
                        at,
                        self.now() - at,
                        response.status_code,
                        response.headers.get("content-type", ""),
                        response.headers.get("retry-after"),
                        path=response.request.url.path,
                    )
                )
            if self.think:
                await asyncio.sleep(self.think)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HttpLoad]:
        self._started = time.perf_counter()
        self._stop.clear()
        users = [asyncio.create_task(self._user()) for _ in range(self.users)]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.gather(*users, return_exceptions=True)

    def between(self, start: float, end: float = float("inf")) -> list[Sample]:
        """The samples that started in [start, end)."""
        return [s for s in self.samples if start <= s.at < end]


def failed(samples: list[Sample], allowed: frozenset[int] = frozenset()) -> list[Sample]:
    """Samples that are neither a success (2xx/3xx) nor an allowed status."""
    return [s for s in samples if not (200 <= s.status < 400 or s.status in allowed)]


def recovery_seconds(samples: list[Sample], since: float) -> float:
    """How long after ``since`` (the dependency's return) the last failed answer came: from
    then on every answer succeeded. 0 when none failed after it."""
    ends = [s.ended for s in samples if not 200 <= s.status < 400 and s.ended >= since]
    return max(ends, default=since) - since


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(samples: list[Sample]) -> str:
    statuses: dict[int, int] = {}
    for s in samples:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    elapsed = [s.elapsed for s in samples]
    return (
        f"{len(samples)} requests, statuses {dict(sorted(statuses.items()))}, "
        f"p50 {percentile(elapsed, 0.5) * 1000:.0f} ms, p95 {percentile(elapsed, 0.95) * 1000:.0f}"
        f" ms, max {max(elapsed, default=0) * 1000:.0f} ms"
    )
