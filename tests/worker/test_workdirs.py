"""A worker starting removes the working directories of pipeline attempts whose process was
killed (worker/workdirs.py), and keeps those of live processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker.workdirs import PREFIX, attempt_directory, remove_abandoned


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_directories_of_gone_processes_and_of_this_one_are_removed(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with attempt_directory() as live:  # named after this process
        assert Path(live).name.startswith(f"{PREFIX}{os.getpid()}-")
    names = {
        "dead": f"{PREFIX}{dead_pid()}-abc",
        "mine": f"{PREFIX}{os.getpid()}-def",  # a restarted container's process reuses the id
        "legacy": f"{PREFIX}x1y2z3",  # from before ids were written
        "other": f"{PREFIX}{os.getppid()}-ghi",  # a live process's attempt
        "unrelated": "something-else",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "media").write_bytes(b"x" * 10)
    removed = remove_abandoned()
    assert sorted(removed) == sorted([names["dead"], names["mine"], names["legacy"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["other"], names["unrelated"]]
    )
