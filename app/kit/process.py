"""Process hygiene: children that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies.

    A gunicorn master or the local supervisor killed outright (SIGKILL, OOM) cannot stop its
    children; without this they live on as orphans that still hold the listening socket, the
    data directory or a database pool. A no-op where prctl is unavailable.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
