"""The login throttle's arithmetic: how long an account's failures delay its next check.

The HTTP behaviour (who is refused, who is not) is in tests/app/kit/test_ratelimit_http.py.
"""

from __future__ import annotations

import pytest

from app.auth.login_throttle import (
    FIRST_DELAY_SECONDS,
    FREE_FAILURES,
    failure_delay,
    failures_before,
    ip_email_subject,
)
from app.kit.ratelimit import Decision, email_subject
from app.settings import Settings


def test_a_few_failures_cost_no_wait() -> None:
    assert [failure_delay(n, 2.0) for n in range(FREE_FAILURES)] == [0.0] * FREE_FAILURES
    assert failure_delay(FREE_FAILURES, 2.0) == FIRST_DELAY_SECONDS


def test_the_delay_grows_with_failures_and_stops_at_the_cap() -> None:
    delays = [failure_delay(n, 2.0) for n in range(40)]
    assert delays == sorted(delays)
    assert delays[FREE_FAILURES : FREE_FAILURES + 4] == [0.25, 0.5, 1.0, 2.0]
    assert max(delays) == 2.0
    # However many failures an attacker piles up, nobody waits longer than the cap.
    for failures in (10**3, 10**9, 2**64):
        assert failure_delay(failures, 2.0) == 2.0
        assert failure_delay(failures, 0.5) == 0.5


@pytest.mark.parametrize("cap", [0.0, -1.0])
def test_no_cap_means_no_delay(cap: float) -> None:
    assert failure_delay(10**6, cap) == 0.0


def test_the_default_cap_is_a_couple_of_seconds() -> None:
    cap = Settings.model_fields["ratelimit_login_delay_max_seconds"].default
    assert 0 < cap <= 2.0
    assert failure_delay(10**9, cap) == cap


def test_failures_before_this_attempt() -> None:
    # Admitted: the window counted this attempt too (remaining is after it).
    assert failures_before(Decision("login_failures_email", True, 20, 19, 60_000)) == 0
    assert failures_before(Decision("login_failures_email", True, 20, 7, 60_000)) == 12
    # Full: at least the limit's worth; the attempt is still checked, only later.
    assert failures_before(Decision("login_failures_email", False, 20, 0, 1_000)) == 20
    # Redis did not answer: no evidence of failures, no delay.
    unknown = Decision("login_failures_email", True, 20, 20, 0, fail_open=True)
    assert failures_before(unknown) == 0


def test_the_pair_subject_keeps_emails_out_of_keys() -> None:
    subject = ip_email_subject("ip:203.0.113.7", " Ada@Example.com ")
    assert subject == f"ip:203.0.113.7|{email_subject('ada@example.com')}"
    assert "example.com" not in subject
