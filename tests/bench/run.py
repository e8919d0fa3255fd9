"""Run a benchmark module the way a developer would: a child process, its own servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Settings that would point a benchmark at an existing stack instead of one of its own.
NOT_INHERITED = {"RECORD_API_URL", "RECORD_API_KEY", "DATABASE_URL", "REDIS_URL"}


def run_module(*args: str, timeout: float) -> str:
    """``python -m <args>``; its combined output, after asserting it exited 0."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out
