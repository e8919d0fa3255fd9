"""The servers a fault scenario breaks on purpose, each its own: a PostgreSQL (the production
roles, migrated) and a Valkey, to stop, pause, kill and start again; procrastinate's real worker
and the real model server, in-process, for as long as a block runs. Shared by
``bench/faults.py`` and ``tests/reliability``."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
import uvicorn

from app.ai.clients import ModelClients
from app.devstack.servers import PostgresServer, ValkeyServer, service_user_kwargs
from app.kit.db import Database
from app.kit.redis import create_redis
from app.kit.roles import LoginRoles, provision
from app.kit.storage import create_store
from testkit import free_port
from worker.jobs import STATE, build_app
from worker.pipeline import PipelineDeps

# The login roles production has, as the test suite names them.
ROLES = LoginRoles("record")


def as_role(url: str, role: str) -> str:
    """The same database, logged in as ``role``."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


def as_login(settings: Any, role: str) -> Any:
    return settings.model_copy(update={"database_url": as_role(settings.database_url, role)})


class OwnValkey:
    """A Valkey of one test's own, to stop, pause and resume."""

    def __init__(self, data_dir: Path) -> None:
        self.server = ValkeyServer(
            data_dir=data_dir, port=free_port(), password=secrets.token_urlsafe(16)
        )
        self.proc: subprocess.Popen[bytes] | None = None

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
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("Valkey did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a lost node does it: no last save, connections reset."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class OwnPostgres:
    """A PostgreSQL of one test's own (the session's roles, migrated), to stop and start again
    while the API and the worker keep running."""

    DATABASE = "record"

    def __init__(self) -> None:
        # Not under tmp_path: the socket's path must stay short (sun_path).
        self.base = Path(tempfile.mkdtemp(prefix="record-rel-pg-"))
        self.server = PostgresServer(data_dir=self.base / "data", socket_dir=self.base / "run")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.server.url(self.DATABASE)

    def create(self) -> None:
        from app.kit.migrate import upgrade

        self.server.initdb()
        self.start()
        provision(
            lambda db: psycopg.connect(self.server.url(db), autocommit=True), ROLES, self.DATABASE
        )
        upgrade(as_role(self.url, ROLES.owner))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.server.command(
                extra={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **service_user_kwargs(),
        )
        deadline = time.monotonic() + 20
        while not self.server.is_ready():
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """A fast shutdown (SIGINT), as a restart or a failover does it: sessions are ended,
        new connections refused until it is back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=20)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@asynccontextmanager
async def worker(settings: Any) -> AsyncIterator[None]:
    """procrastinate's worker, polling often, running until the block ends."""
    db = Database(as_login(settings, ROLES.worker), check_connections=True)
    await db.open()
    redis = create_redis(settings.redis_url, timeout=2.0)
    clients = ModelClients.from_settings(settings)
    STATE.deps = PipelineDeps(
        settings=settings, db=db, store=create_store(settings), models=clients, redis=redis
    )
    jobs = build_app(as_login(settings, ROLES.worker))
    try:
        async with jobs.open_async():
            task = asyncio.create_task(
                jobs.run_worker_async(
                    install_signal_handlers=False,
                    concurrency=1,
                    listen_notify=False,
                    fetch_job_polling_interval=0.2,
                )
            )
            try:
                yield
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        STATE.deps = None
        await clients.aclose()
        await redis.aclose()
        await db.close()


@asynccontextmanager
async def model_server(application: Any, port: int) -> AsyncIterator[None]:
    """The real model server's app on a real port, until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the model server did not start"
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await task
