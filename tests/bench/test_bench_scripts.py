"""The rate-limit and pipeline benchmarks run end to end on tiny sizes and print every figure.

Speed is judged by running them for real (figures in the notes), never here: these only keep the
scripts working, so a benchmark cannot rot between the runs that matter.
"""

from __future__ import annotations

import re

import pytest

from tests.bench.run import run_module

pytestmark = pytest.mark.slow


def test_ratelimit_bench_prints_every_contender_and_both_goals() -> None:
    out = run_module(
        "bench.ratelimit", "--seconds", "0.05", "--rounds", "2", "--keys", "10", timeout=120
    )
    for row in (
        "ours (sliding window)",
        "limits MovingWindow",
        "PING ",
        "PING on the wire",
        "(ref) plain zset script",
        "(ref) plain script, wire",
    ):
        assert re.search(rf"^{re.escape(row)}\s+[\d,]+\s", out, re.MULTILINE), (row, out)
    assert re.search(r"^ours / limits\s+[\d.]+\s+[\d.]+\s+goal >= 1\.10: (met|MISSED)", out, re.M)
    assert re.search(r"^ours / PING\s+[\d.]+\s+[\d.]+\s+goal >= 0\.85: (met|MISSED)", out, re.M)


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
