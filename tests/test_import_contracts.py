"""The import contracts in .importlinter hold, and they can fail: a module that breaks one on
purpose (a benchmark importing the tests) is reported by name."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_the_contracts_hold() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout or "broken" not in result.stdout


def test_a_benchmark_importing_the_tests_breaks_a_contract() -> None:
    probe = ROOT / "bench" / f"_contract_probe_{uuid.uuid4().hex[:8]}.py"
    probe.write_text("from tests.conftest import ROLES  # noqa: F401\n")
    try:
        result = lint_imports()
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "benchmarks import no tests" in result.stdout
    assert f"bench.{probe.stem} -> tests.conftest" in result.stdout
