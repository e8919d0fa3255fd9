"""Soak (issue 15, item 8): a real ``record up`` under moderate k6 load for a long time, with
every process's memory, the database connections and the latency watched on one clock.

    .venv/bin/python -m bench.soak [--duration 30m] [--vus 10] [--warmup 5m]
    .venv/bin/python -m bench.faults --soak 30m        (the same, from the fault bench)

The stack is its own (``testkit.stack``: PostgreSQL, Valkey, the model server, gunicorn's API
workers, the procrastinate worker, each a process of ``record up``); the identities, orgs and
seed recordings come from ``bench.load``'s setup, and the load is ``bench/k6/record_load.js``
(the same mix: lists, reads, searches, chat streams, shares, an upload per org).

Every ``--every`` seconds a sampler records, per component, the unique memory (USS: pages
only that process holds; RSS would grow as PostgreSQL backends touch shared buffers) of its
processes, and the connections PostgreSQL has open per role. k6 writes every request to a CSV.

Verdicts, each against the level the run itself reached after ``--warmup``:

- memory: every component's USS at the end (the median of the last window's samples) within
  10 % of its level after warm-up (the median of the first window after it);
- connections: no role holds more connections at the end than at its peak during warm-up and
  the first window (the pools are bounded; a leak grows past them);
- latency: the p95 of expected (2xx) answers per window (a tenth of the measured time, at
  least 20 s); the median of the second half's windows at most 1.5 x the first half's + 25 ms
  (a trend fails it, one slow window does not).

CI runs 3 minutes of it (``tests/reliability/test_soak.py``, ``make soak``); the figures of a
30-minute run go in the issue's note.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import load  # noqa: E402

MEMORY_GROWTH = 0.10
P95_GROWTH = 1.5
P95_SLACK_MS = 25.0  # a few milliseconds of noise on a small p95 is no trend
MiB = 1024 * 1024


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is like 90s, 3m or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def component(proc: psutil.Process) -> str | None:
    """Which part of the stack a process of ``record up``'s tree is (None: a helper such as
    the shell k6 is not part of)."""
    try:
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    rules = (
        ("postgres", name.startswith("postgres") or "/postgres " in f"{cmdline} "),
        ("valkey", "valkey" in name or "valkey-server" in cmdline),
        ("api", "gunicorn" in cmdline),
        ("worker", cmdline.endswith(" worker") or " worker " in cmdline),
        ("models", "models" in cmdline),
    )
    return next((part for part, matches in rules if matches), None)


@dataclass
class Sample:
    at: float
    memory: dict[str, int]  # component -> USS bytes (all its processes)
    processes: dict[str, int]  # component -> how many processes
    connections: dict[str, int]  # database role -> connections open


@dataclass
class Sampler:
    root: psutil.Process
    database_url: str
    every: float
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: float = field(default_factory=time.monotonic)

    def sample(self) -> Sample:
        memory: dict[str, int] = {}
        count: dict[str, int] = {}
        for proc in self.root.children(recursive=True):
            part = component(proc)
            if part is None:
                continue
            try:
                uss = proc.memory_full_info().uss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            memory[part] = memory.get(part, 0) + uss
            count[part] = count.get(part, 0) + 1
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT usename, count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " GROUP BY usename"
            ).fetchall()
        return Sample(time.monotonic() - self._started, memory, count, {r[0]: r[1] for r in rows})

    def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class Verdict:
    lines: list[str]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def windows(start: float, end: float) -> list[tuple[float, float]]:
    size = max(20.0, (end - start) / 10)
    out = []
    at = start
    while at + size <= end + 1e-9:
        out.append((at, at + size))
        at += size
    return out or [(start, end)]


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def read_k6_csv(path: Path) -> list[tuple[float, float]]:
    """(unix seconds, ms) of every expected (2xx-class) request k6 made."""
    out: list[tuple[float, float]] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["metric_name"] == "http_req_duration" and row["expected_response"] == "true":
                out.append((float(row["timestamp"]), float(row["metric_value"])))
    return out


def judge(samples: list[Sample], requests: list[tuple[float, float]], warmup: float) -> Verdict:
    """The verdicts above, from the sampler's samples (seconds from the load's start) and k6's
    requests (seconds from the same start)."""
    lines: list[str] = []
    failures: list[str] = []
    end = max((s.at for s in samples), default=0.0)
    spans = windows(warmup, end)
    first, last = spans[0], spans[-1]

    def within(span: tuple[float, float], closed: bool = False) -> list[Sample]:
        return [s for s in samples if span[0] <= s.at < span[1] or (closed and s.at == span[1])]

    early, late = within(first), within(last, closed=True)
    if not early or not late:
        times = ", ".join(f"{s.at:.0f}" for s in samples)
        why = f"too few samples after warm-up {warmup:.0f} s (samples at {times} s)"
        return Verdict([why], [why])
    lines.append(
        f"memory (USS; median of the window {first[0]:.0f}-{first[1]:.0f} s vs "
        f"{last[0]:.0f}-{last[1]:.0f} s):"
    )
    parts = sorted({p for s in samples for p in s.memory})
    for part in parts:
        level = statistics.median(s.memory.get(part, 0) for s in early)
        final = statistics.median(s.memory.get(part, 0) for s in late)
        peak = max(s.memory.get(part, 0) for s in samples)
        growth = final / level - 1 if level else 0.0
        procs = max(s.processes.get(part, 0) for s in samples)
        ok = growth <= MEMORY_GROWTH
        lines.append(
            f"  {part:<9} {level / MiB:7.1f} -> {final / MiB:7.1f} MiB ({growth:+.1%}; peak "
            f"{peak / MiB:.1f} MiB; {procs} processes) {'ok' if ok else 'GREW'}"
        )
        if not ok:
            failures.append(f"{part} memory grew {growth:+.1%} after warm-up")

    lines.append("database connections per role (peak until the first window's end -> end):")
    roles = sorted({r for s in samples for r in s.connections})
    for role in roles:
        before = max(s.connections.get(role, 0) for s in samples if s.at < first[1])
        final = late[-1].connections.get(role, 0)
        peak = max(s.connections.get(role, 0) for s in samples)
        ok = final <= before
        lines.append(
            f"  {role:<14} {before:3d} -> {final:3d} (peak {peak}) {'ok' if ok else 'LEAK?'}"
        )
        if not ok:
            failures.append(f"{role} holds {final} connections, {before} before")

    lines.append("p95 of expected answers per window:")
    figures: list[float] = []
    for span in spans:
        values = [ms for at, ms in requests if span[0] <= at < span[1]]
        figures.append(p95(values))
        lines.append(f"  {span[0]:6.0f}-{span[1]:6.0f} s: {figures[-1]:7.1f} ms ({len(values)})")
    # A trend, not a spike: the median of the later half's window p95s against the earlier
    # half's. One slow window (a neighbour's burst on a shared machine, a long chat answer)
    # moves a half's pooled p95 but not the median of its windows; a process slowing down as
    # it runs moves them all.
    half = max(1, len(figures) // 2)
    early_p95 = statistics.median(figures[:half])
    late_p95 = statistics.median(figures[half:] or figures[-1:])
    allowed = P95_GROWTH * early_p95 + P95_SLACK_MS
    lines.append(
        f"  median window p95, first half -> second half: {early_p95:.1f} ms -> "
        f"{late_p95:.1f} ms (at most {P95_GROWTH} x the first + {P95_SLACK_MS:g} ms = "
        f"{allowed:.1f} ms)"
    )
    if late_p95 > allowed:
        failures.append(f"p95 went from {early_p95:.1f} ms to {late_p95:.1f} ms")
    return Verdict(lines, failures)


def soak(duration: float, vus: int, warmup: float, every: float, keep: bool = False) -> Verdict:
    from app.devstack.servers import PostgresServer, socket_dir_for

    args = load.build_parser().parse_args(
        ["--vus", str(vus), "--duration", f"{int(duration)}s", "--p95-ms", "100000"]
        + (["--keep"] if keep else [])
    )
    args.url, args.key = None, None  # always a stack of its own: its processes are watched
    args.users = max(args.orgs, vus)
    work = Path(tempfile.mkdtemp(prefix="record-soak-"))
    try:
        with load.target(args) as tgt:
            stack = tgt.stack
            assert stack is not None  # no --url: always a stack of its own
            api = load.Api(tgt.url)
            try:
                data = load.setup(api, args, tgt.key, work, tgt.mail_dir)
            finally:
                api.close()
            data_path = work / "identities.json"
            data_path.write_text(json.dumps(data))
            data_path.chmod(0o600)
            pg = PostgresServer(stack.state / "pg", socket_dir_for(stack.state / "pg"))
            requests_csv = work / "requests.csv"
            sampler = Sampler(psutil.Process(stack.proc.pid), pg.url("record"), every)
            began = time.time()
            with sampler:
                out = ["--out", f"csv={requests_csv}"]
                code = load.run_k6(args, tgt.url, data_path, work / "summary.json", out)
            print(f"k6 exited {code}", flush=True)
            requests = [(at - began, ms) for at, ms in read_k6_csv(requests_csv)]
        verdict = judge(sampler.samples, requests, warmup)
        header = (
            f"soak: {vus} VUs for {duration:.0f} s (warm-up {warmup:.0f} s), "
            f"{len(requests)} expected answers, {len(sampler.samples)} samples every {every:g} s"
        )
        verdict.lines.insert(0, header)
        if code not in (0, 99):
            verdict.failures.append(f"k6 exited {code}")
        return verdict
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("30m"))
    parser.add_argument("--vus", type=int, default=10)
    parser.add_argument(
        "--warmup", type=parse_duration, help="default: a fifth of --duration, at most 5 min"
    )
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(300.0, args.duration / 5)
    verdict = soak(args.duration, args.vus, warmup, args.every, args.keep)
    print("\n".join(verdict.lines))
    for failure in verdict.failures:
        print(f"FAIL: {failure}")
    print("soak: " + ("pass" if verdict.ok else "FAIL"))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
