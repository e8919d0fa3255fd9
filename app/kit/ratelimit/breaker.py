"""A circuit breaker for a Redis that stopped answering: skip it for a while, then probe."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed → (failure) open for ``cooldown`` s → half-open: one probe; it closes or reopens.

    One per process and Redis client, shared by all its callers: they fail together. No lock:
    it lives on one event loop and never awaits between checking and changing its state.
    """

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self.cooldown:
            return False
        self._probing = True  # half-open: this caller is the one probe
        return True

    def succeeded(self) -> bool:
        """Record a success; True when it closed an open breaker."""
        was_open = self._opened_at is not None
        self._opened_at = None
        self._probing = False
        return was_open

    def failed(self) -> None:
        self._opened_at = self._clock()
        self._probing = False

    def abandoned(self) -> None:
        """The call was cancelled before it could tell: let the next caller probe."""
        self._probing = False
