"""Faults on purpose, against the real servers of ``tests/conftest.py``.

A fault that would break other tests (stopping Valkey, filling a disk) gets a server or a
filesystem of its own here, so the session's shared ones stay healthy.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
import redis
import uvicorn

from app.ai.clients import ModelClients
from app.devstack.servers import PostgresServer, ValkeyServer, service_user_kwargs
from app.kit.db import Database
from app.kit.redis import create_redis
from app.kit.roles import provision
from app.kit.storage import create_store

# The API-level fixtures (orgs made through the API, their mail, the real models behind the
# in-process model server, a seeded corpus), as tests/app has them.
from tests.app.conftest import local_models, mailbox, model_app, org_a, org_b  # noqa: F401
from tests.app.retrieval import corpus, models, seeder  # noqa: F401
from tests.conftest import ROLES, as_login, as_role, free_port
from worker.jobs import STATE, build_app
from worker.pipeline import PipelineDeps


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


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[OwnValkey]:
    valkey = OwnValkey(tmp_path / "valkey")
    valkey.start()
    try:
        yield valkey
    finally:
        valkey.stop()


@asynccontextmanager
async def running_app(
    settings: Any, *, wait_for_pool: bool = True, models_app: Any = None
) -> AsyncIterator[Any]:
    """The app as the ``app`` fixture makes it (the API's login role), for settings of a test's
    own; ``wait_for_pool=False`` for a database that is not there."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    transport = httpx2.ASGITransport(app=models_app) if models_app is not None else None
    if transport is not None:  # the in-process model server, as the ``models`` fixture has it
        settings = settings.model_copy(update={"openai_base_url": "http://models.test/v1"})
    application = create_app(as_login(settings, ROLES.api), model_transport=transport)
    async with LifespanManager(application):
        if wait_for_pool:
            await application.state.services.db.pool.wait(timeout=10)
        yield application


@asynccontextmanager
async def http_client(application: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


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


class SilentHost:
    """A port that accepts TCP connections and never says a word: a database host that hangs
    (a stopped process, a black-holed network) as a client sees it. ``close`` ends the hang:
    the waiting connections are reset."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def silent_host() -> Iterator[SilentHost]:
    host = SilentHost()
    try:
        yield host
    finally:
        host.close()


def _mount(args: list[str]) -> str | None:
    """Run ``mount``; the reason it refused, or None."""
    try:
        result = subprocess.run(
            ["mount", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or "refused")


def mount_small_filesystem(target: Path, size_kib: int, scratch: Path) -> None:
    """A filesystem of ``size_kib`` at ``target``: tmpfs, or else an ext4 image on a loop
    device. Skips the test, saying why, where neither may be mounted (CI without privileges)."""
    target.mkdir(parents=True, exist_ok=True)
    refused = _mount(["-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(target)])
    if refused is None:
        return
    image = scratch / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(size_kib * 1024)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, check=False
    )
    loop_refused = (
        _mount(["-o", "loop", str(image), str(target)])
        if made.returncode == 0
        else ("mkfs.ext4 failed")
    )
    if loop_refused is not None:
        pytest.skip(
            f"cannot mount a small filesystem here (tmpfs: {refused}; loop: {loop_refused})"
        )


def unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@pytest.fixture
def small_disk(settings: Any, tmp_path: Path) -> Iterator[Path]:
    """The app's object store (``STATE_DIR/objects``) on a 256 KiB filesystem of its own."""
    objects = settings.state_dir / "objects"
    mount_small_filesystem(objects, 256, tmp_path)
    try:
        yield objects
    finally:
        unmount(objects)


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


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    postgres = OwnPostgres()
    try:
        postgres.create()
        yield postgres
    finally:
        postgres.remove()
