"""A real `record up`, started once for this package, checked as an operator would.

It runs in a temporary state directory on free ports, so it never touches a developer's
`.record/` or a stack already running on port 8000.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import free_port, wait_until
from testkit.stack import RunningStack, start_stack

__all__ = ["RunningStack", "free_port", "start_stack", "wait_until"]

pytestmark = pytest.mark.stack


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
