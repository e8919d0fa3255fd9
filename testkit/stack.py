"""A real ``record up`` in a temporary state directory on free ports, so it never touches a
developer's ``.record/`` or a stack already running on port 8000 (the stack tests, the load
test and the soak run it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testkit import free_port, read_env_file


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
    state: Path,
    api_port: int | None = None,
    valkey_port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> RunningStack:
    """Start ``record up`` and return once its API is ready (it rewrites ``dev.env`` then)."""
    api_port = api_port or free_port()
    valkey_port = valkey_port or free_port()
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
    state.parent.mkdir(parents=True, exist_ok=True)
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
        if dev_env.exists() and dev_env.stat().st_mtime_ns != previous:
            return stack
        time.sleep(0.5)
    stack.stop()
    raise RuntimeError(f"record up was not ready in time:\n{log.read_text()}")
