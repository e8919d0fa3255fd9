"""Three minutes of the soak (``bench/soak.py``) against a real ``record up``: memory of every
process, database connections and p95 judged against the run's own level after warm-up.
Deselected from ``make test`` (marker ``soak``); CI runs it with ``make soak``."""

from __future__ import annotations

import pytest

from bench.soak import Sample, judge, soak


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(900)  # the stack, the setup (~2 min) and 3 minutes of load
def test_three_minutes_under_load_hold_memory_connections_and_latency() -> None:
    verdict = soak(duration=180, vus=8, warmup=60, every=5)
    print("\n".join(verdict.lines))
    assert verdict.ok, verdict.failures


def _samples(memory: list[int], connections: list[int]) -> list[Sample]:
    return [
        Sample(at=10.0 * i, memory={"api": m}, processes={"api": 3}, connections={"app": c})
        for i, (m, c) in enumerate(zip(memory, connections, strict=True))
    ]


def test_the_judge_sees_growth_a_leak_and_a_slower_tail() -> None:
    # Level after warm-up (30 s) is 100; it ends at 120 (+20 %), connections climb past the
    # pool's peak, and the second half's p95 is six times the first's.
    samples = _samples([90, 100, 100, 100, 100, 120, 120, 120], [5, 5, 5, 6, 6, 8, 9, 9])
    requests = [(30.0 + i * 0.1, 10.0) for i in range(200)] + [
        (50.0 + i * 0.1, 60.0) for i in range(200)
    ]
    verdict = judge(samples, requests, warmup=30.0)
    assert not verdict.ok
    assert any("api memory grew +20.0%" in f for f in verdict.failures)
    assert any("app holds 9 connections" in f for f in verdict.failures)
    assert any("p95 went from 10.0 ms to 60.0 ms" in f for f in verdict.failures)


def test_the_judge_passes_a_flat_run() -> None:
    samples = _samples([90, 100, 101, 99, 100, 102, 101, 100], [5, 6, 6, 6, 6, 6, 6, 6])
    requests = [(30.0 + i * 0.2, 10.0 + (i % 5)) for i in range(200)]
    verdict = judge(samples, requests, warmup=30.0)
    assert verdict.ok, verdict.failures


def test_one_slow_window_is_no_trend() -> None:
    # Five windows of 20 s after a 30 s warm-up; the fourth is slow (a neighbour's burst),
    # the rest are flat: no failure. Slow from the fourth on would be one.
    samples = [
        Sample(at=10.0 * i, memory={"api": 100}, processes={"api": 3}, connections={"app": 6})
        for i in range(14)
    ]

    def requests(slow: set[int]) -> list[tuple[float, float]]:
        return [
            (30.0 + i * 0.1, 200.0 if int((i * 0.1) // 20) in slow else 10.0) for i in range(1000)
        ]

    assert judge(samples, requests({3}), warmup=30.0).ok
    verdict = judge(samples, requests({3, 4}), warmup=30.0)
    assert any("p95 went from 10.0 ms to 200.0 ms" in f for f in verdict.failures)
