"""Helpers the tests and the benchmarks share: a free port, a wait loop, and a real
``record up`` on free ports (``testkit.stack``). Neither ``tests`` nor ``bench`` imports the
other; both import this."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

from app.devstack.supervisor import read_env_file

__all__ = ["free_port", "read_env_file", "wait_until"]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.25,
    ignore: tuple[type[BaseException], ...] = (OSError, httpx.HTTPError),
) -> bool:
    """Call ``check`` until it returns something true (True) or ``timeout`` passes (False);
    the exceptions in ``ignore`` (a server not listening yet) count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except ignore:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
