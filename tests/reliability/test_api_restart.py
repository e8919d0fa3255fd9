"""The API restarted under load (issue 15, item 5): a rolling restart of gunicorn's workers
(SIGHUP) fails no request, and a stop (SIGTERM) lets every in-flight request finish while new
connections are refused at once.

gunicorn runs as the image runs it (``app.gunicorn_conf``, uvicorn workers, the API's login
role), a real process on a real port. The slow requests are uploads whose body arrives over
two seconds, as from a slow uplink: they are in flight when the signal comes, and a worker
stopped without waiting for them would cut them off. The manifest's side (preStop pause,
grace period) is tests/infra/test_graceful_shutdown.py.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.faultprocs import GunicornApi, slow_upload
from tests.app.conftest import Tenant
from tests.app.recordings.test_upload import wav_bytes
from tests.conftest import free_port

pytestmark = pytest.mark.slow

GRACEFUL_SECONDS = 10
SLOW_UPLOAD_SECONDS = 2.0
WAV = wav_bytes(0.5)


@dataclass
class Answer:
    kind: str
    started: float
    ended: float
    status: int | None  # None: no answer (the error says why)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


def requests(auth: dict[str, str]) -> dict[str, Callable[[httpx.AsyncClient], Awaitable[Any]]]:
    return {
        "list": lambda c: c.get("/api/recordings", headers=auth),
        "search": lambda c: c.post(
            "/api/search", json={"query": "budget", "mode": "keyword"}, headers=auth
        ),
        "upload": lambda c: slow_upload(c, auth, WAV, SLOW_UPLOAD_SECONDS),
    }


async def user(
    base_url: str,
    kinds: dict[str, Callable[[httpx.AsyncClient], Awaitable[Any]]],
    stop: asyncio.Event,
    answers: list[Answer],
) -> None:
    """One client with its own keep-alive connection, as a browser or a load balancer has."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        while not stop.is_set():
            kind = random.choice(list(kinds))
            started = time.monotonic()
            try:
                response = await kinds[kind](client)
                answers.append(Answer(kind, started, time.monotonic(), response.status_code))
            except httpx.HTTPError as exc:
                answers.append(
                    Answer(kind, started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
                )
            await asyncio.sleep(0.02)


@pytest.fixture
def api_process(settings: Any, tmp_path: Path) -> Any:
    api = GunicornApi(
        settings,
        free_port(),
        tmp_path / "api.log",
        WEB_CONCURRENCY="2",
        GUNICORN_GRACEFUL_TIMEOUT=str(GRACEFUL_SECONDS),
    )
    api.start()
    try:
        yield api
    finally:
        api.stop()


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.1)


async def test_a_rolling_restart_of_the_workers_fails_no_request(
    api_process: GunicornApi, org_a: Tenant
):
    answers: list[Answer] = []
    stop = asyncio.Event()
    kinds = requests(org_a.auth())
    users = [asyncio.create_task(user(api_process.url, kinds, stop, answers)) for _ in range(6)]
    await asyncio.sleep(SLOW_UPLOAD_SECONDS + 1)
    old = api_process.workers()
    hup = time.monotonic()
    api_process.signal(signal.SIGHUP)
    await wait_for(
        lambda: not (api_process.workers() & old) and len(api_process.workers()) == 2,
        GRACEFUL_SECONDS + 10,
        "the old workers replaced",
    )
    replaced = time.monotonic()
    await asyncio.sleep(SLOW_UPLOAD_SECONDS + 1)
    stop.set()
    await asyncio.gather(*users)

    failed = [a for a in answers if not a.ok]
    across = [a for a in answers if a.kind == "upload" and a.started < hup < a.ended]
    print(
        f"SIGHUP under 6 users: {len(answers)} requests, {len(failed)} failed, "
        f"{len(across)} slow uploads in flight across it, workers replaced in "
        f"{replaced - hup:.1f}s"
    )
    assert failed == []
    assert across, "no upload was in flight when the restart began"
    assert len(answers) > 10


async def test_a_stop_lets_in_flight_requests_finish_and_refuses_new_ones(
    api_process: GunicornApi, org_a: Tenant
):
    kinds = requests(org_a.auth())
    async with httpx.AsyncClient(base_url=api_process.url, timeout=30) as client:
        # Load first, then drained, as the preStop pause drains it in Kubernetes: the pod has
        # left the load balancer's targets before SIGTERM comes.
        for kind in ("list", "search", "list"):
            assert (await kinds[kind](client)).status_code == 200
    uploads = []
    for _ in range(4):
        client = httpx.AsyncClient(base_url=api_process.url, timeout=30)
        uploads.append((client, asyncio.create_task(kinds["upload"](client))))
    await asyncio.sleep(SLOW_UPLOAD_SECONDS / 3)
    assert not any(task.done() for _c, task in uploads), "the uploads ended before the stop"
    stopped = time.monotonic()
    api_process.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)

    # A new connection while the old ones drain: refused at once, not accepted and dropped.
    refused_at = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=api_process.url, timeout=5) as late:
            await late.get("/livez")
    refused_in = time.monotonic() - refused_at

    answers = await asyncio.gather(*(task for _c, task in uploads), return_exceptions=True)
    for client, _task in uploads:
        await client.aclose()
    assert api_process.proc is not None
    code = await asyncio.to_thread(api_process.proc.wait, GRACEFUL_SECONDS + 10)
    exited_in = time.monotonic() - stopped
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    print(
        f"SIGTERM with 4 slow uploads in flight: {statuses}; a new connection refused in "
        f"{refused_in * 1000:.0f} ms; gunicorn exited {code} after {exited_in:.1f}s"
    )
    assert statuses == [202] * 4
    assert refused_in < 1.0
    assert code == 0
    assert exited_in < GRACEFUL_SECONDS
