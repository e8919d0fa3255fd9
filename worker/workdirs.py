"""Where a pipeline attempt keeps the media it downloads and the audio it decodes, and the
removal of what killed attempts left behind.

A worker killed outright (an OOM kill, a lost node, SIGKILL) cannot run its ``finally``: the
attempt's directory stays. In a pod, ``/tmp`` is an emptyDir that outlives a container restart
and has a size limit (infra/pods.py), so the copies of a long recording that keeps killing the
worker (its media plus the decoded audio, ~115 MB an hour, once per attempt) would add up to
the pod's eviction. Each directory's name carries its process id; a worker starting removes
those of processes that are gone, and of its own id (a restarted container's process often has
the id of the one it replaces).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "record-pipeline-"


def attempt_directory() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_abandoned(root: Path | None = None) -> list[str]:
    """Remove the attempt directories no live process owns; their names. Call before the first
    job starts: this process's own directories count as abandoned."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        owner = path.name.removeprefix(PREFIX).split("-", 1)[0]
        # A name without an id is from before ids were written: its process has long gone.
        if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
