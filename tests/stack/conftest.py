"""A real `record up`, started once for this package, checked as an operator would.

It runs in a temporary state directory on free ports, so it never touches a developer's
`.record/` or a stack already running on port 8000.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.devstack.supervisor import read_env_file

pytestmark = pytest.mark.stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningStack:
    proc: subprocess.Popen[bytes]
    state: Path
    api_port: int
    valkey_port: int
    env: dict[str, str]
    log: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def dev_env(self) -> dict[str, str]:
        return read_env_file(self.state / "dev.env")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=60)
        return self.proc.returncode


def start_stack(
    state: Path, api_port: int, valkey_port: int, extra_env: dict[str, str] | None = None
) -> RunningStack:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "OPENAI_BASE_URL"}
    }
    env.update(
        STATE_DIR=str(state),
        LOCAL_API_PORT=str(api_port),
        LOCAL_VALKEY_PORT=str(valkey_port),
        LOCAL_MODELS_PORT=str(free_port()),
        WEB_CONCURRENCY="2",
        LOG_LEVEL="INFO",
    )
    env.update(extra_env or {})
    log = state.parent / f"record-up-{int(time.time() * 1000)}.log"
    record = str(Path(sys.executable).parent / "record")
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [record, "up"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack = RunningStack(proc, state, api_port, valkey_port, env, log)
    dev_env = state / "dev.env"
    previous = dev_env.stat().st_mtime_ns if dev_env.exists() else None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"record up exited {proc.returncode}:\n{log.read_text()}")
        # dev.env is (re)written once the API is ready.
        if dev_env.exists() and dev_env.stat().st_mtime_ns != previous:
            return stack
        time.sleep(0.5)
    stack.stop()
    raise RuntimeError(f"record up was not ready in time:\n{log.read_text()}")


@pytest.fixture(scope="package")
def stack_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="record-stack-"))
    yield base / "state"
    import shutil

    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="package")
def stack(stack_dir: Path) -> Iterator[RunningStack]:
    running = start_stack(stack_dir, free_port(), free_port())
    try:
        yield running
    finally:
        running.stop()


def wait_until(check, timeout: float = 30.0, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    return False
