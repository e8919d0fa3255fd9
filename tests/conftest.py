"""Real servers for the tests: an embedded PostgreSQL 18 + pgvector 0.8 and a Valkey, started once.

The server gets the roles production has (``app/kit/roles.py``); migrations run once, as the
owner role, into a template database; each test that needs a database gets a fresh clone of it
(CREATE DATABASE ... TEMPLATE), so tests never see each other's rows. The ``database_url``
fixture and ``settings.database_url`` log in as the superuser, for a test's own set-up and
checks; the app under test logs in as the API's role, and the worker's tests as the worker's.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from app.devstack.servers import PostgresServer, ValkeyServer, service_user_kwargs
from app.kit.roles import LoginRoles, provision
from testkit import free_port

TEMPLATE_DB = "record_template"
ROLES = LoginRoles("record")
_db_counter = itertools.count()


def _wait(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout}s")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp_path: pytest prunes old base directories, and a concurrent pytest
    # run would delete a running server's data directory.
    base = Path(tempfile.mkdtemp(prefix="record-test-pg-"))
    server = PostgresServer(data_dir=base / "data", socket_dir=base / "run")
    server.initdb()
    log = open(base / "postgres.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        server.command(
            extra={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **service_user_kwargs(),
    )
    _wait(server.is_ready, "PostgreSQL")
    # The socket is private and trusted: no passwords.
    provision(lambda db: psycopg.connect(server.url(db), autocommit=True), ROLES, TEMPLATE_DB)
    try:
        yield server
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: don't wait for idle clients
        proc.wait(timeout=20)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(pg_server: PostgresServer) -> str:
    from app.kit.migrate import upgrade

    url = pg_server.url(TEMPLATE_DB)
    upgrade(as_role(url, ROLES.owner))
    return url


def as_role(url: str, role: str) -> str:
    """The same database, logged in as ``role``."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


def as_login(settings: Any, role: str) -> Any:
    """``settings`` whose database URL logs in as ``role`` (``ROLES.api``, ``ROLES.worker``)."""
    return settings.model_copy(update={"database_url": as_role(settings.database_url, role)})


def clone_database(pg_server: PostgresServer, name: str) -> str:
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(
            f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE_DB} OWNER {ROLES.owner} '
            "STRATEGY FILE_COPY"
        )
    return pg_server.url(name)


@pytest.fixture
def database_url(pg_server: PostgresServer, template_url: str) -> Iterator[str]:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    url = clone_database(pg_server, name)
    yield url
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer(
        data_dir=tmp_path_factory.mktemp("valkey"),
        port=free_port(),
        password=secrets.token_urlsafe(16),
    )
    proc = subprocess.Popen(
        server.command(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def ready() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(server.url).ping())
        except redis.RedisError:
            return False

    _wait(ready, "Valkey")
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(valkey_server: ValkeyServer) -> str:
    import redis

    client = redis.Redis.from_url(valkey_server.url)
    client.flushall()
    client.close()
    return valkey_server.url


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Any:
    from app.settings import Settings

    return Settings(
        environment="test",
        # /docs and /openapi.json (the schema tests read it), whatever the default is.
        api_docs_enabled=True,
        database_url=database_url,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        database_pool_min=1,
        database_pool_max=4,
        log_level="WARNING",
    )


@pytest.fixture
async def app(settings: Any) -> AsyncIterator[Any]:
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    # As in production: the API's login role, which owns nothing and may act as record_app only.
    application = create_app(as_login(settings, ROLES.api))
    async with LifespanManager(application):
        await application.state.services.db.pool.wait(timeout=10)
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[Any]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
