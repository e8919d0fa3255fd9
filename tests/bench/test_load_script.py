"""`python -m bench.load` end to end: its own stack, setup through the API, k6, the table."""

from __future__ import annotations

import pytest

from tests.bench.run import run_module

pytestmark = pytest.mark.slow


def test_load_script_passes_its_thresholds_against_a_fresh_stack() -> None:
    out = run_module("bench.load", "--vus", "2", "--duration", "5s", "--orgs", "1", timeout=240)
    assert "starting a stack of its own" in out
    assert "p(95)<500: p95 = " in out
    assert "FAIL" not in out
    assert "rate<0.01: rate = 0.00 %" in out
    assert "stack stopped (record up exited 0)" in out
