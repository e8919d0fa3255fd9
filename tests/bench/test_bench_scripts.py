"""The rate-limit and pipeline benchmarks run end to end on tiny sizes and print every figure.

Speed is judged by running them for real (figures in the notes), never here: these only keep the
scripts working, so a benchmark cannot rot between the runs that matter.
"""

from __future__ import annotations

import re

import pytest

from tests.bench.run import run_module

pytestmark = pytest.mark.slow


def test_ratelimit_bench_prints_both_servers_and_the_ratio() -> None:
    out = run_module(
        "bench.ratelimit",
        *("--vus", "4", "--seconds", "1", "--rounds", "2", "--users", "2", "--warmup", "1"),
        timeout=240,
    )
    for row in ("limited", "unlimited"):
        assert re.search(rf"^{row}\s+[\d,]+\s+[\d,]+\s+[\d,]+$", out, re.MULTILINE), (row, out)
    assert re.search(
        r"^limited / unlimited\s+[\d.]+\s+goal >= 0\.90: (met|MISSED)", out, re.MULTILINE
    ), out
    assert re.search(r"^load average \(1, 5, 15 min\) on \d+ CPUs: before ", out, re.M), out


def test_pipeline_bench_prints_its_three_figures() -> None:
    out = run_module(
        "bench.pipeline", "--texts", "8", "--chunks", "60", "--rounds", "1", timeout=600
    )
    assert re.search(r"^transcription RTF, \d+ s of speech.*\s[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"^embeddings/s, 8 chunks .*\s[\d.]+$", out, re.MULTILINE), out
    for block in ("as deployed", "no HNSW/GIN index", "bare table (ceiling)"):
        for way in ("one_by_one", "executemany"):
            assert f"chunks/s, 60, {block}: {way} / COPY" in out, out
    assert re.search(r"^goal: COPY >= 5x executemany for 60 chunks: (met|MISSED)", out, re.M)


def test_search_bench_prints_recall_and_latency_for_every_org() -> None:
    out = run_module(
        "bench.search", "--rows", "2000", "--queries", "3", "--exact-max", "200", timeout=300
    )
    # One row per org of the table: recall@k and p95 of every plan, the exact scan first
    # (recall 1 by definition: the baseline).
    for org in ("org 60%", "org 25%", "org 10%", "org 4%", "org 0.9%", "org 0.1%"):
        row = rf"^{re.escape(org)}\s+1\.000\s+[\d.]+(\s+[\d.]+\s+[\d.]+){{5}}\s*$"
        assert re.search(row, out, re.M), out
    assert "record's plans: {'ann'" in out  # the large orgs took the index at this exact-max
    assert "record's plans: {'exact'" in out  # and the small ones were scanned exactly
    assert re.search(r"^worst(\s+[\d.]+){12}\s*$", out, re.M), out


def test_cache_bench_prints_the_transcript_figure() -> None:
    out = run_module(
        "bench.cache", "--segments", "50", "--requests", "3", "--rounds", "1", timeout=300
    )
    assert re.search(
        r"^GET transcript, 50 segments, ms per request\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M
    ), out
