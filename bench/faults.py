"""Faults on purpose at full size (issue 15): each scenario prints its figures with the load
they ran under.

    .venv/bin/python -m bench.faults [--scenario all|postgres|valkey|models|worker-kill|api-restart]
        [--users 40] [--down 10] [--outage 60] [--recordings 20] [--kills 10]
        [--restarts 3]
    .venv/bin/python -m bench.faults --soak 30m [--soak-users 10]   (bench/soak.py)

- ``postgres``: virtual users list recordings while PostgreSQL is stopped (fast shutdown) for
  ``--down`` seconds and started again; an upload just before the stop and one after, with the
  worker left running. Figures: answers by status and latency per phase, whether every failure
  was a 503 problem+json with Retry-After, the longest wait, the seconds from the database's
  return to the last failed answer, the uploads' end states.
- ``valkey``: a mix of reads (list, keyword and hybrid search) and ``/readyz`` while Valkey is
  hung (SIGSTOP) for 5 s, then killed and restarted three times. Figures: failed requests, the
  slowest, readiness answers, both breakers' state after.
- ``models``: an upload made while the model server is down for ``--outage`` seconds (the
  default is beyond the old five-attempt schedule's 37 s), with the waits doubling from 1 s and
  capped at 8 s. Figures: attempts, waits, seconds from the model server's return to ``ready``.
- ``worker-kill``: ``record worker`` (its own process) SIGKILLed ``--kills`` times while it runs
  pipeline jobs over ``--recordings`` spoken recordings (espeak-ng), started again each time.
  Figures: end states, attempts, duplicate chunks, objects without a row and rows without an
  object, killed attempts' working directories left behind.
- ``api-restart``: gunicorn as the image runs it (a real process) under ``--users`` (list,
  keyword search, uploads whose body takes 2 s): ``--restarts`` rolling restarts of its workers
  (SIGHUP), then SIGTERM with uploads in flight. Figures: failed requests, requests in flight
  across a restart, the uploads' answers after SIGTERM, how a new connection is refused, the
  exit code and time.

In-process, as the CI-sized versions in ``tests/reliability`` are (the same helpers,
``bench/faultstack.py`` and ``bench/faultload.py``): the API over ASGI, procrastinate's real
worker, the real model server on a port, and a PostgreSQL and a Valkey of the run's own, in a
temporary directory removed afterwards. k6 against ``record up`` (``bench/load.py``) is the
steady-state load test; a fault needs the load, the fault and the figures on one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.faultload import HttpLoad, describe, failed, recovery_seconds  # noqa: E402
from bench.faultprocs import (  # noqa: E402
    GunicornApi,
    WorkerProcess,
    chunk_count,
    kill_while_running,
    slow_upload,
    spoken_wav,
    wait_all_done,
)
from bench.faultstack import (  # noqa: E402
    ROLES,
    OwnPostgres,
    OwnValkey,
    as_login,
    free_port,
    model_server,
    worker,
)

PASSWORD = "plum-tide-orbit-velvet-42"
PROBLEM = "application/problem+json"
WORDS = ("budget", "review", "planning", "offsite", "launch", "quarter", "hiring")


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                for i in range(int(seconds * rate))
            )
        )
    return buffer.getvalue()


def base_settings(postgres: OwnPostgres, valkey: OwnValkey, state: Path) -> Any:
    from app.settings import Settings

    return Settings(
        environment="test",
        database_url=postgres.url,
        redis_url=valkey.url,
        state_dir=state,
        log_level="ERROR",
        # Budgets the load cannot spend: a 429 would hide whether the limiter answered.
        ratelimit_api="1000000/60",
        ratelimit_search="1000000/60",
        ratelimit_upload="1000/3600",
        ratelimit_signup="1000/60",
    )


@asynccontextmanager
async def servers() -> AsyncIterator[tuple[OwnPostgres, OwnValkey, Path]]:
    base = Path(tempfile.mkdtemp(prefix="record-faults-"))
    postgres = OwnPostgres()
    valkey = OwnValkey(base / "valkey")
    try:
        await asyncio.to_thread(postgres.create)
        await asyncio.to_thread(valkey.start)
        yield postgres, valkey, base / "state"
    finally:
        valkey.stop()
        postgres.remove()
        shutil.rmtree(base, ignore_errors=True)


@asynccontextmanager
async def api(settings: Any, model_app: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    transport = httpx2.ASGITransport(app=model_app) if model_app is not None else None
    if transport is not None:
        settings = settings.model_copy(update={"openai_base_url": "http://models.test/v1"})
    application = create_app(as_login(settings, ROLES.api), model_transport=transport)
    async with LifespanManager(application):
        await application.state.services.db.pool.wait(timeout=10)
        asgi = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=asgi, base_url="http://faults") as client:
            client.app = application  # type: ignore[attr-defined]
            yield client


async def owner_key(client: httpx.AsyncClient) -> dict[str, str]:
    """An org of its own, made through the API: its owner's API key, as request headers."""
    email = f"faults-{secrets.token_hex(4)}@example.com"
    response = await client.post(
        "/api/auth/signup",
        json={"email": email, "password": PASSWORD, "name": "Ada", "org_name": "Faults"},
    )
    response.raise_for_status()
    user = response.json()
    org_id = user["org"]["id"]
    session = {"Authorization": f"Bearer {user['session_token']}", "X-Record-Org": org_id}
    response = await client.post(
        f"/api/orgs/{org_id}/api-keys", json={"name": "faults", "role": "owner"}, headers=session
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['key']}"}


async def upload(client: httpx.AsyncClient, auth: dict[str, str], name: str) -> str:
    response = await client.post(
        "/api/recordings",
        files={"file": (name, tone_wav(2.0), "application/octet-stream")},
        data={"title": name},
        headers=auth,
    )
    response.raise_for_status()
    return str(response.json()["recording"]["id"])


def statuses(url: str, recording_ids: list[str]) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id::text, status FROM recordings WHERE id = ANY(%s::uuid[])", (recording_ids,)
        ).fetchall()
    return {row[0]: row[1] for row in rows}


async def until_done(url: str, recording_ids: list[str], within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    while True:
        now = statuses(url, recording_ids)
        if all(s in {"ready", "failed"} for s in now.values()) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


def local_model_app() -> Any:
    from app.ai.local_models import LocalModels
    from app.ai.server import create_model_app

    return create_model_app(LocalModels(), preload=False)


# -- scenarios -----------------------------------------------------------------------------------


async def postgres_stopped(users: int, down: float, model_app: Any) -> None:
    async with servers() as (postgres, valkey, state), AsyncExitStack() as stack:
        port = free_port()
        settings = base_settings(postgres, valkey, state).model_copy(
            update={
                "openai_base_url": f"http://127.0.0.1:{port}/v1",
                "job_retry_base_seconds": 1.0,
            }
        )
        await stack.enter_async_context(model_server(model_app, port))
        client = await stack.enter_async_context(api(settings))
        await stack.enter_async_context(worker(settings))
        auth = await owner_key(client)
        load = HttpLoad(lambda: client.get("/api/recordings", headers=auth), users=users)
        async with load.running():
            await asyncio.sleep(5.0)
            before = await upload(client, auth, "before.wav")
            stopped = load.now()
            await asyncio.to_thread(postgres.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(postgres.start)
            back = load.now()
            await asyncio.sleep(15.0)
        after = await upload(client, auth, "after.wav")
        ends = await until_done(postgres.url, [before, after], 180)
    unavailable = [s for s in load.samples if s.status == 503]
    print(f"\n== PostgreSQL stopped for {down:.0f} s; {users} users listing recordings")
    print(f"before:     {describe(load.between(0, stopped))}")
    print(f"while down: {describe(load.between(stopped, back))}")
    print(f"after:      {describe(load.between(back))}")
    print(f"failures other than 503: {len(failed(load.samples, frozenset({503})))}")
    print(
        "503s as problem+json with Retry-After: "
        f"{sum(1 for s in unavailable if s.content_type == PROBLEM and s.retry_after)}"
        f" of {len(unavailable)}"
    )
    print(
        f"longest wait: {max(s.elapsed for s in load.samples):.2f} s "
        f"(pool timeout {settings.database_pool_timeout_seconds:g} s)"
    )
    print(f"last failure after the database returned: {recovery_seconds(load.samples, back):.2f} s")
    print(f"uploads (before, after): {[ends.get(before), ends.get(after)]}")


async def valkey_hung_and_killed(users: int, model_app: Any) -> None:
    from app.kit.cache import cache_breaker
    from app.kit.ratelimit import SERVICES_KEY

    async with servers() as (postgres, valkey, state):
        settings = base_settings(postgres, valkey, state)
        async with api(settings, model_app) as client:
            auth = await owner_key(client)
            # Warm-up, not measured: the first hybrid search loads the embedding model.
            await client.post("/api/search", json={"query": "warm", "mode": "hybrid"}, headers=auth)
            choices = [
                lambda: client.get("/api/recordings", headers=auth),
                lambda: client.post(
                    "/api/search",
                    json={
                        "query": random.choice(WORDS),
                        "mode": random.choice(["keyword", "hybrid"]),
                    },
                    headers=auth,
                ),
                lambda: client.get("/readyz"),
            ]

            def request() -> Any:
                return random.choice(choices)()

            load = HttpLoad(request, users=users, timeout=10)
            app = client.app  # type: ignore[attr-defined]
            limiter = app.state.services.extras[SERVICES_KEY]
            async with load.running():
                await asyncio.sleep(5.0)
                hung = load.now()
                valkey.pause()
                await asyncio.sleep(5.0)
                valkey.resume()
                await asyncio.sleep(3.0)
                killed = load.now()
                for _ in range(3):
                    valkey.kill()
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(valkey.start)
                    await asyncio.sleep(2.0)
                back = load.now()
                await asyncio.sleep(limiter.breaker.cooldown + 5.0)
            limiter_open = limiter.breaker.is_open
            cache_open = cache_breaker(app.state.services.redis).is_open
    readiness = [s for s in load.samples if s.path == "/readyz"]
    print(
        f"\n== Valkey hung 5 s, then killed and restarted 3 times; {users} users "
        "(list, keyword and hybrid search, /readyz)"
    )
    print(f"before:           {describe(load.between(0, hung))}")
    print(f"hung:             {describe(load.between(hung, killed))}")
    print(f"killed/restarted: {describe(load.between(killed, back))}")
    print(f"after:            {describe(load.between(back))}")
    print(
        f"failed requests: {len(failed(load.samples))}; slowest "
        f"{max(s.elapsed for s in load.samples):.2f} s"
    )
    print(
        f"/readyz: {sum(1 for s in readiness if s.status == 200)} of {len(readiness)} answered 200"
    )
    print(f"breakers open after: limiter {limiter_open}, caches {cache_open}")


async def model_server_outage(outage: float, model_app: Any) -> None:
    from worker.jobs import PipelineRetry

    async with servers() as (postgres, valkey, state):
        port = free_port()
        settings = base_settings(postgres, valkey, state).model_copy(
            update={
                "openai_base_url": f"http://127.0.0.1:{port}/v1",
                "job_retry_base_seconds": 1.0,
                "model_outage_retry_max_wait_seconds": 8.0,
            }
        )
        async with api(settings) as client, worker(settings):
            auth = await owner_key(client)
            recording = await upload(client, auth, "outage.wav")
            await asyncio.sleep(outage)
            async with model_server(model_app, port):
                returned = time.monotonic()
                ends = await until_done(postgres.url, [recording], 300)
                to_ready = time.monotonic() - returned
        with psycopg.connect(postgres.url) as conn:
            attempts = conn.execute(
                "SELECT attempts FROM procrastinate_jobs WHERE args->>'recording_id' = %s",
                (recording,),
            ).fetchone()
    old = PipelineRetry(settings.job_max_attempts, 2.0)
    old_reach = sum(old.wait_seconds(n) for n in range(settings.job_max_attempts - 1))
    print(f"\n== Model server down {outage:.0f} s; one upload (waits from 1 s, capped at 8 s)")
    print(
        f"old schedule: {settings.job_max_attempts} attempts within ~{old_reach} s of waits, "
        "then failed"
    )
    print(
        f"end state: {ends.get(recording)} after {attempts[0] if attempts else '?'} attempts; "
        f"{to_ready:.1f} s from the model server's return"
    )


SPOKEN = (
    "The marketing team will present the new budget on Monday morning.",
    "Please remember to water the garden plants before breakfast every day.",
    "Our quarterly planning offsite moves to the second week of March.",
    "The hiring committee reviews the final candidates on Thursday afternoon.",
    "We launch the mobile application once the security review is complete.",
)


async def worker_killed(recordings: int, kills: int, model_app: Any) -> None:
    """``record worker`` SIGKILLed ``kills`` times while it runs pipeline jobs over a batch of
    spoken recordings, started again each time (as Kubernetes restarts the container)."""
    async with servers() as (postgres, valkey, state):
        port = free_port()
        settings = base_settings(postgres, valkey, state).model_copy(
            update={"openai_base_url": f"http://127.0.0.1:{port}/v1"}
        )
        stalled, concurrency = 10, 2
        proc = WorkerProcess(
            settings,
            state.parent / "worker-tmp",
            state.parent / "worker.log",
            JOB_STALLED_SECONDS=str(stalled),
            JOB_RETRY_BASE_SECONDS="1",
            WORKER_CONCURRENCY=str(concurrency),
        )
        async with api(settings) as client, model_server(model_app, port):
            auth = await owner_key(client)
            ids = []
            for n in range(recordings):
                text = " ".join(SPOKEN[(n + k) % len(SPOKEN)] for k in range(3))
                wav = spoken_wav(text, state.parent / f"r{n}.wav")
                response = await client.post(
                    "/api/recordings",
                    files={"file": (f"r{n}.wav", wav, "application/octet-stream")},
                    data={"title": f"r{n}"},
                    headers=auth,
                )
                response.raise_for_status()
                ids.append(str(response.json()["recording"]["id"]))
            started = time.monotonic()
            proc.start()
            try:
                interrupted = await kill_while_running(postgres.url, proc, kills)
                killed = time.monotonic() - started
                result = await wait_all_done(postgres.url, state / "objects", ids, 900)
                done = time.monotonic() - started
            finally:
                proc.stop()
        chunks = chunk_count(postgres.url, ids)
        leftovers = proc.leftovers()
    by_status: dict[str, int] = {}
    for status in result.statuses.values():
        by_status[status] = by_status.get(status, 0) + 1
    attempts = sorted(result.attempts.values())
    print(
        f"\n== Worker SIGKILLed {kills} times mid-job over {recordings} spoken recordings "
        f"(concurrency {concurrency}, JOB_STALLED_SECONDS={stalled})"
    )
    print(f"kills done after {killed:.1f} s, {interrupted} running jobs interrupted")
    print(f"end states: {by_status} after {done:.1f} s; {chunks} chunks")
    print(f"attempts per recording: min {attempts[0]}, max {attempts[-1]}, all {attempts}")
    print(f"duplicate chunks (same index or offsets): {len(result.duplicate_chunks)}")
    print(
        f"objects without a row: {len(result.objects_without_row)}; "
        f"rows without an object: {len(result.rows_without_object)}"
    )
    print(f"killed attempts' working directories left in the worker's /tmp: {len(leftovers)}")


async def _rolling_restarts(gunicorn: GunicornApi, load: HttpLoad, restarts: int) -> list[float]:
    """SIGHUP ``restarts`` times, 5 s apart, each once the previous workers are all replaced;
    when each came (on the load's clock) and how long its replacement took."""
    hups: list[float] = []
    await asyncio.sleep(5.0)
    for _ in range(restarts):
        old = gunicorn.workers()
        hups.append(load.now())
        gunicorn.signal(signal.SIGHUP)
        while gunicorn.workers() & old or len(gunicorn.workers()) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        hups.append(load.now())
        await asyncio.sleep(5.0)
    return hups


async def _stop_with_uploads(
    gunicorn: GunicornApi, auth: dict[str, str], uploads: int, wav: bytes, seconds: float
) -> str:
    """SIGTERM while ``uploads`` slow uploads are in flight; what came of them, of a new
    connection, and of gunicorn."""
    clients = [httpx.AsyncClient(base_url=gunicorn.url, timeout=30) for _ in range(uploads)]
    tasks = [asyncio.create_task(slow_upload(c, auth, wav, seconds)) for c in clients]
    await asyncio.sleep(seconds / 3)
    stopped = time.monotonic()
    gunicorn.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    late_at = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=gunicorn.url, timeout=5) as late:
            late_answer = f"answered {(await late.get('/livez')).status_code}"
    except httpx.ConnectError:
        late_answer = "refused"
    late_in = time.monotonic() - late_at
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.aclose()
    assert gunicorn.proc is not None
    code = await asyncio.to_thread(gunicorn.proc.wait, 60)
    ends: dict[str, int] = {}
    for answer in answers:
        key = str(answer.status_code) if isinstance(answer, httpx.Response) else repr(answer)
        ends[key] = ends.get(key, 0) + 1
    return (
        f"SIGTERM with {uploads} uploads in flight: {ends}; a new connection {late_answer} in "
        f"{late_in * 1000:.0f} ms; gunicorn exited {code} after "
        f"{time.monotonic() - stopped:.1f} s"
    )


async def api_restarted(users: int, restarts: int) -> None:
    """gunicorn (as the image runs it, a real process) under ``users``: ``restarts`` rolling
    restarts of its workers (SIGHUP), then a stop (SIGTERM) with slow uploads in flight."""
    graceful, upload_seconds = 10, 2.0
    wav = tone_wav(0.5)
    async with servers() as (postgres, valkey, state):
        gunicorn = GunicornApi(
            base_settings(postgres, valkey, state),
            free_port(),
            state.parent / "api.log",
            WEB_CONCURRENCY="2",
            GUNICORN_GRACEFUL_TIMEOUT=str(graceful),
        )
        await asyncio.to_thread(gunicorn.start)
        try:
            async with httpx.AsyncClient(base_url=gunicorn.url, timeout=30) as client:
                auth = await owner_key(client)
                choices = [
                    lambda: client.get("/api/recordings", headers=auth),
                    lambda: client.post(
                        "/api/search",
                        json={"query": random.choice(WORDS), "mode": "keyword"},
                        headers=auth,
                    ),
                    lambda: slow_upload(client, auth, wav, upload_seconds),
                ]
                load = HttpLoad(lambda: random.choice(choices)(), users=users)  # noqa: PLW0108
                async with load.running():
                    marks = await _rolling_restarts(gunicorn, load, restarts)
            stop = await _stop_with_uploads(gunicorn, auth, max(4, users // 4), wav, upload_seconds)
        finally:
            gunicorn.stop()
    hups, replaced = marks[0::2], marks[1::2]
    across = sum(1 for s in load.samples if any(s.at < hup < s.ended for hup in hups))
    print(
        f"\n== API (gunicorn, 2 workers, GUNICORN_GRACEFUL_TIMEOUT={graceful}) under {users} "
        f"users (list, keyword search, uploads dribbled over {upload_seconds:g} s)"
    )
    print(f"before:                 {describe(load.between(0, hups[0]))}")
    print(f"{restarts} rolling restarts (SIGHUP): {describe(load.between(hups[0]))}")
    print(
        f"failed requests: {len(failed(load.samples))}; in flight across a restart: {across}; "
        "workers replaced in "
        + ", ".join(f"{end - hup:.1f}" for hup, end in zip(hups, replaced, strict=True))
        + " s"
    )
    print(stop)
    for sample in failed(load.samples):
        print(f"failed: {sample.error} at {sample.at:.2f} s, after {sample.elapsed:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        choices=["all", "postgres", "valkey", "models", "worker-kill", "api-restart"],
        default="all",
    )
    parser.add_argument("--recordings", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--down", type=float, default=10.0)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument(
        "--soak", metavar="DURATION", help="instead: a soak of this long (bench/soak.py), e.g. 30m"
    )
    parser.add_argument("--soak-users", type=int, default=10)
    args = parser.parse_args()
    if args.soak:
        from bench import soak

        sys.exit(soak.main(["--duration", args.soak, "--vus", str(args.soak_users)]))
    model_app = local_model_app()

    async def run() -> None:
        if args.scenario in {"all", "postgres"}:
            await postgres_stopped(args.users, args.down, model_app)
        if args.scenario in {"all", "valkey"}:
            await valkey_hung_and_killed(args.users, model_app)
        if args.scenario in {"all", "models"}:
            await model_server_outage(args.outage, model_app)
        if args.scenario in {"all", "worker-kill"}:
            await worker_killed(args.recordings, args.kills, model_app)
        if args.scenario in {"all", "api-restart"}:
            await api_restarted(args.users, args.restarts)

    asyncio.run(run())


if __name__ == "__main__":
    main()
