"""Login attempts, counted by their failures: the right password is never refused because
someone else got it wrong.

Before the password is checked, an attempt takes a slot in three sliding windows
(``app/kit/ratelimit/``); a success gives its slots back, so only failures stay counted:

- ``login_failures_ip_email``: this client address's failures on this account. Over the
  limit, 429 — guessing one account from one address. A success from there empties it.
- ``login_failures_ip``: this client address's failures on any account. Over the limit, 429 —
  one address spraying passwords over many accounts.
- ``login_failures_email``: the account's failures from anywhere. It never refuses: a limit
  that anyone can fill locks the owner out (it did: ten wrong passwords sent from anywhere
  refused the owner's right one for the rest of the minute). Instead each further check first
  waits ``failure_delay``, at most ``ratelimit_login_delay_max_seconds``, which slows guessing
  spread over many addresses while the owner, from an address that has not failed, still gets
  in.

Slots are taken before the check rather than recorded after a failure, so that a burst of
concurrent guesses cannot all pass a count read before any of them had failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.requests import Request

from app.kit.errors import AuthenticationError, RateLimitError
from app.kit.ratelimit import (
    Decision,
    email_subject,
    enforce,
    ip_subject,
    refund,
    request_client_ip,
    request_limiter,
)
from app.settings import Settings

PER_IP_EMAIL = "login_failures_ip_email"
PER_IP = "login_failures_ip"
PER_EMAIL = "login_failures_email"

# Someone who mistypes their password a few times waits for nothing; from then on the wait
# doubles per failure, from a quarter of a second up to the cap.
FREE_FAILURES = 3
FIRST_DELAY_SECONDS = 0.25


def failure_delay(failures: int, max_seconds: float) -> float:
    """Seconds to wait before checking a password for an account that has had ``failures``
    recent failed logins (from any address), never more than ``max_seconds``."""
    if failures < FREE_FAILURES or max_seconds <= 0:
        return 0.0
    doublings = min(failures - FREE_FAILURES, 32)  # past the cap anyway; keeps 2**n small
    return min(max_seconds, FIRST_DELAY_SECONDS * 2.0**doublings)


def failures_before(decision: Decision) -> int:
    """The failures a window held before this attempt took its slot (a full window: all)."""
    if decision.fail_open:
        return 0
    if not decision.allowed:
        return decision.limit
    return max(0, decision.limit - decision.remaining - 1)


def ip_email_subject(ip: str, email: str) -> str:
    return f"{ip}|{email_subject(email)}"


@asynccontextmanager
async def login_attempt(request: Request, settings: Settings, email: str) -> AsyncIterator[None]:
    """Guard one password check: ``async with login_attempt(...): <check the password>``.

    Raises ``RateLimitError`` (429) before the check when this address has failed too often,
    on this account or on any; waits first when the account has failed often from anywhere.
    The check failing with ``AuthenticationError`` counts as a failure; any other outcome
    gives back what the attempt took.
    """
    limiters = request_limiter(request)
    if limiters is None:
        yield
        return
    ip = ip_subject(request_client_ip(request))
    pair = ip_email_subject(ip, email)
    taken: list[Decision | None] = []
    try:
        taken.append(await enforce(request, PER_IP_EMAIL, pair))
        taken.append(await enforce(request, PER_IP, ip))
    except RateLimitError:
        # Refused before any password was checked: that is no failure to count.
        for decision in taken:
            await refund(request, decision)
        raise
    # Not ``enforce``: this window never refuses, and its numbers are no limit the client
    # has to pace itself by, so they stay out of the response headers.
    account = await limiters.hit(PER_EMAIL, email_subject(email))
    taken.append(account)
    cap = settings.ratelimit_login_delay_max_seconds
    await anyio.sleep(failure_delay(failures_before(account), cap))
    try:
        yield
    except AuthenticationError:
        raise  # a failed login: its slots stay taken
    except Exception:
        for decision in taken:
            await refund(request, decision)
        raise
    # The right password: the attempt was no failure, and this address's earlier failures
    # on the account are forgiven.
    for decision in taken:
        await refund(request, decision)
    await limiters.forget(PER_IP_EMAIL, pair)
