"""`python -m bench.load` end to end: its own stack, setup through the API, k6, the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_load_script_passes_its_thresholds_against_a_fresh_stack() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RECORD_API_URL", "RECORD_API_KEY", "DATABASE_URL", "REDIS_URL"}
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", "--vus", "2", "--duration", "5s", "--orgs", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "starting a stack of its own" in out
    assert "p(95)<500: p95 = " in out
    assert "FAIL" not in out
    assert "rate<0.01: rate = 0.00 %" in out
    assert "stack stopped (record up exited 0)" in out
