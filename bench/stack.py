"""The embedded servers a benchmark runs against: PostgreSQL (a "bench" database at the
migrations' head) and Valkey, in a temporary directory, stopped and removed afterwards."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def start_servers(base: Path):
    from app.devstack.servers import PostgresServer, ValkeyServer, service_user_kwargs
    from testkit import free_port

    pg = PostgresServer(data_dir=base / "pg", socket_dir=base / "run")
    pg.initdb()
    pg_proc = subprocess.Popen(
        pg.command(extra={"fsync": "off", "synchronous_commit": "off"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **service_user_kwargs(),
    )
    wait_for(pg.is_ready, "PostgreSQL")
    valkey = ValkeyServer(data_dir=base / "valkey", port=free_port(), password="bench-only")
    valkey_proc = subprocess.Popen(
        valkey.command(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def valkey_ready() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(valkey.url).ping())
        except redis.RedisError:
            return False

    wait_for(valkey_ready, "Valkey")
    return pg, pg_proc, valkey, valkey_proc


@contextmanager
def bench_stack(prefix: str, **overrides: Any) -> Iterator[Any]:
    """``Settings`` pointing at servers of the benchmark's own, with ``overrides``."""
    from app.kit.migrate import upgrade
    from app.settings import Settings

    base = Path(tempfile.mkdtemp(prefix=prefix))
    pg, pg_proc, valkey, valkey_proc = start_servers(base)
    try:
        pg.create_database("bench")
        upgrade(pg.url("bench"))
        yield Settings(
            database_url=pg.url("bench"),
            redis_url=valkey.url,
            state_dir=base,
            log_level="WARNING",
            **overrides,
        )
    finally:
        pg_proc.send_signal(signal.SIGINT)
        valkey_proc.terminate()
        pg_proc.wait(timeout=30)
        valkey_proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
