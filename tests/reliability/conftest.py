"""Faults on purpose, against the real servers of ``tests/conftest.py``.

A fault that would break other tests (stopping Valkey, filling a disk) gets a server or a
filesystem of its own here, so the session's shared ones stay healthy.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from bench.faultstack import OwnPostgres, OwnValkey, model_server, worker  # noqa: F401

# The API-level fixtures (orgs made through the API, their mail, the real models behind the
# in-process model server, a seeded corpus), as tests/app has them.
from tests.app.conftest import local_models, mailbox, model_app, org_a, org_b  # noqa: F401
from tests.app.retrieval import corpus, models, seeder  # noqa: F401
from tests.conftest import ROLES, as_login


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


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    postgres = OwnPostgres()
    try:
        postgres.create()
        yield postgres
    finally:
        postgres.remove()
