"""The processes a fault scenario kills, as production runs them (``record worker``; the API
under gunicorn), and what is checked after: chunks written twice, objects without a row and rows
without an object. Shared by ``bench/faults.py`` and ``tests/reliability``; the servers they
talk to come from ``bench/faultstack.py``."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.jobs.queue import PIPELINE_TASK
from bench.faultstack import ROLES, as_role

BIN = Path(sys.executable).parent
PIPELINE_TMP_PREFIX = "record-pipeline-"


def service_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment a deployment gives a process, for ``settings``' servers."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    }
    env.update(
        ENVIRONMENT=settings.environment.value,
        LOG_LEVEL="WARNING",
        REDIS_URL=settings.redis_url,
        STATE_DIR=str(settings.state_dir),
        RATELIMIT_ENABLED="false",
    )
    if settings.openai_base_url:
        env["OPENAI_BASE_URL"] = settings.openai_base_url
    env.update(extra)
    return env


class WorkerProcess:
    """``record worker`` as its own process (the worker's login role), to SIGKILL mid-job as an
    OOM kill or a lost node does, and start again as Kubernetes restarts the container: the same
    temporary directory (the pod's emptyDir outlives a container restart)."""

    def __init__(self, settings: Any, tmp: Path, log: Path, **env: str) -> None:
        self.env = service_env(
            settings,
            DATABASE_URL=as_role(settings.database_url, ROLES.worker),
            WORKER_METRICS_PORT="0",
            TMPDIR=str(tmp),
            **env,
        )
        self.tmp = tmp
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        tmp.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "record"), "worker"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, as a deploy stops it: running jobs finish or go back to the queue."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def leftovers(self) -> list[str]:
        """Pipeline working directories still in the worker's temporary directory."""
        return sorted(p.name for p in self.tmp.glob(f"{PIPELINE_TMP_PREFIX}*"))


def running_pipeline_jobs(url: str, *, not_of: set[int]) -> list[tuple[int, int]]:
    """(job id, worker id) of pipeline jobs being run by a worker not in ``not_of``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, worker_id FROM procrastinate_jobs WHERE status = 'doing' "
            "AND task_name = %s AND worker_id IS NOT NULL "
            "AND worker_id <> ALL(%s::bigint[])",
            (PIPELINE_TASK, sorted(not_of)),
        ).fetchall()
    return [(int(r[0]), int(r[1])) for r in rows]


def wait_for_running_job(url: str, *, not_of: set[int], within: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        running = running_pipeline_jobs(url, not_of=not_of)
        if running:
            return running
        time.sleep(0.05)
    raise AssertionError(f"no pipeline job started within {within:g}s")


@dataclass
class Outcome:
    """What a batch left behind."""

    statuses: dict[str, str]
    attempts: dict[str, int]
    duplicate_chunks: list[tuple[Any, ...]] = field(default_factory=list)
    objects_without_row: list[str] = field(default_factory=list)
    rows_without_object: list[str] = field(default_factory=list)


def outcome(url: str, objects: Path, recording_ids: list[str]) -> Outcome:
    """Each recording's status and its job's attempts; chunks of one recording with the same
    index or the same offsets; files in the object store that no recording names (a
    ``.partial-`` file included) and recordings naming a file that is not there."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT r.id::text, r.status, coalesce(max(j.attempts), 0) FROM recordings r "
            "LEFT JOIN procrastinate_jobs j ON j.args->>'recording_id' = r.id::text "
            "WHERE r.id = ANY(%s::uuid[]) GROUP BY r.id, r.status",
            (recording_ids,),
        ).fetchall()
        duplicates = conn.execute(
            "SELECT recording_id::text, 'idx', idx::text, count(*) FROM transcript_chunks "
            "GROUP BY recording_id, idx HAVING count(*) > 1 "
            "UNION ALL "
            "SELECT recording_id::text, 'offsets', start_seconds || '-' || end_seconds, count(*) "
            "FROM transcript_chunks GROUP BY recording_id, start_seconds, end_seconds "
            "HAVING count(*) > 1"
        ).fetchall()
        keys = {
            str(r[0])
            for r in conn.execute(
                "SELECT media_key FROM recordings WHERE media_key IS NOT NULL"
            ).fetchall()
        }
    stored = (
        {str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()}
        if objects.exists()
        else set()
    )
    return Outcome(
        statuses={r[0]: r[1] for r in rows},
        attempts={r[0]: int(r[2]) for r in rows},
        duplicate_chunks=[tuple(r) for r in duplicates],
        objects_without_row=sorted(stored - keys),
        rows_without_object=sorted(keys - stored),
    )


def chunk_count(url: str, recording_ids: list[str]) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM transcript_chunks WHERE recording_id = ANY(%s::uuid[])",
            (recording_ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def spoken_wav(text: str, path: Path) -> bytes:
    """``text`` read aloud by espeak-ng, as WAV bytes: speech, so the pipeline makes chunks."""
    subprocess.run(["espeak-ng", "-s", "160", "-w", str(path), text], check=True)
    return path.read_bytes()


class GunicornApi:
    """The API as the image runs it (gunicorn, uvicorn workers, ``app.gunicorn_conf``) on a port
    of its own, logged in as the API's role, to SIGHUP (a rolling restart of its workers) and
    SIGTERM (a pod stopping)."""

    def __init__(self, settings: Any, port: int, log: Path, **env: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = service_env(
            settings,
            DATABASE_URL=as_role(settings.database_url, ROLES.api),
            BIND=f"127.0.0.1:{port}",
            **env,
        )
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "gunicorn"), "app.main:create_app()", "-c", "python:app.gunicorn_conf"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + within
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> set[int]:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        """SIGTERM and wait; gunicorn's exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.proc = None
        return code


async def kill_while_running(url: str, proc: WorkerProcess, kills: int) -> int:
    """SIGKILL the worker ``kills`` times, each while it runs a pipeline job (a random part of
    a second into it), and start it again at once, as Kubernetes restarts a container. Returns
    how many running jobs the kills interrupted (at least those seen running)."""
    killed_workers: set[int] = set()
    interrupted = 0
    for _ in range(kills):
        running = await asyncio.to_thread(
            wait_for_running_job, url, not_of=killed_workers, within=120
        )
        await asyncio.sleep(random.uniform(0.0, 0.3))
        proc.kill()
        killed_workers |= {worker for _job, worker in running}
        interrupted += len(running)
        proc.start()
    return interrupted


async def wait_all_done(url: str, objects: Path, ids: list[str], within: float) -> Outcome:
    """The batch's outcome once every recording is ``ready`` or ``failed`` (or ``within``
    seconds have passed)."""
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(outcome, url, objects, ids)
        done = all(s in {"ready", "failed"} for s in result.statuses.values())
        if done or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


def multipart(title: str, content: bytes) -> tuple[bytes, str]:
    """An upload's form (title and file) as one body, and its content type."""
    boundary = secrets.token_hex(12)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\n{title}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{title}.wav"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + content + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


async def dribbled(body: bytes, seconds: float, pieces: int = 8) -> AsyncIterator[bytes]:
    """``body`` in ``pieces`` spread over ``seconds``, as from a slow uplink."""
    size = -(-len(body) // pieces)
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(seconds / pieces)


def slow_upload(
    client: httpx.AsyncClient, auth: dict[str, str], content: bytes, seconds: float
) -> Awaitable[httpx.Response]:
    """An upload whose body takes ``seconds`` to arrive: in flight on the server all along."""
    body, content_type = multipart(f"slow-{secrets.token_hex(3)}", content)
    return client.post(
        "/api/recordings",
        content=dribbled(body, seconds),
        headers={**auth, "Content-Type": content_type, "Content-Length": str(len(body))},
    )
