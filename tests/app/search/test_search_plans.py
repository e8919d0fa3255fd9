"""The vector search's plans against the real PostgreSQL + pgvector, as the application role
under row-level security, judged against numpy's exact answer on the same vectors."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from prometheus_client import REGISTRY

from app.kit.db import Database
from app.search import repository
from app.search.service import nearest
from bench.search import Corpus, exact_neighbours, load_corpus, recall, synthetic_corpus

K = 10
# One cluster everyone shares and one of each org's own: a query at the big org's own cluster
# has more of the big org's rows near it than any index scan returns.
SHARES = {"big": 0.78, "mid": 0.20, "tiny": 0.02}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return synthetic_corpus(3000, SHARES, shared_clusters=1, own_clusters=1, spread=0.6)


@pytest.fixture
def plan_settings(settings, corpus: Corpus):
    load_corpus(settings.database_url, corpus)
    return settings.model_copy(update={"search_exact_max_chunks": 100})


def plans() -> dict[str, float]:
    return {
        plan: REGISTRY.get_sample_value("record_search_plans_total", {"plan": plan}) or 0.0
        for plan in ("exact", "ann", "ann_fallback")
    }


def own_cluster_queries(corpus: Corpus, org: int, count: int = 5) -> np.ndarray:
    """Rows of the org's own cluster, which no other org's rows are near."""
    rows = corpus.rows_of(org)
    own = rows[corpus.in_own_cluster[rows]]
    return corpus.vectors[np.random.default_rng(org).choice(own, size=count)]


async def run(settings, corpus: Corpus, org: int, query: np.ndarray, **kw) -> list[uuid.UUID]:
    org_id = corpus.org_ids[org]
    db = Database(settings)
    await db.open()
    try:
        async with db.transaction(org_id=org_id) as conn:
            found = await nearest(conn, settings, org_id, query, K, recording_ids=kw.get("rids"))
    finally:
        await db.close()
    return [c.chunk_id for c in found]


async def test_the_statistics_say_only_the_callers_own_share(plan_settings, corpus: Corpus):
    db = Database(plan_settings)
    await db.open()
    try:
        for org, name in enumerate(corpus.org_names):
            async with db.transaction(org_id=corpus.org_ids[org]) as conn:
                stats = await repository.chunk_stats(conn)
            assert stats.table_rows == pytest.approx(3000, rel=0.05)
            assert stats.org_share == pytest.approx(SHARES[name], abs=0.02)
        async with db.transaction(org_id=uuid.uuid4()) as conn:  # an org with no chunks
            assert (await repository.chunk_stats(conn)).org_share is None
        async with db.transaction() as conn:  # no org at all
            assert (await repository.chunk_stats(conn)).org_share is None
    finally:
        await db.close()


async def test_a_small_org_is_searched_exactly_where_the_index_would_miss(
    plan_settings, corpus: Corpus
):
    tiny = corpus.org_names.index("tiny")
    for query in own_cluster_queries(corpus, 0, 3):  # near the big org: the index sees only it
        before = plans()
        found = await run(plan_settings, corpus, tiny, query)
        assert found == exact_neighbours(corpus, tiny, query, K)
        assert plans()["exact"] == before["exact"] + 1
        # What the index gives the same org: its rows among the index's candidates (pgvector
        # 0.6 filters ef_search = 40 of them), here none.
        with psycopg.connect(plan_settings.database_url) as conn:
            register_vector(conn)
            candidates = conn.execute(
                "SELECT id, org_id FROM transcript_chunks ORDER BY embedding <=> %s LIMIT 40",
                (query,),
            ).fetchall()
        indexed = [row[0] for row in candidates if row[1] == corpus.org_ids[tiny]]
        assert recall(indexed, found) < 0.5


async def test_a_large_org_uses_the_index_and_keeps_its_recall(plan_settings, corpus: Corpus):
    recalls = []
    for org in (0, 1):  # big and mid, each near its own rows
        for query in own_cluster_queries(corpus, org):
            before = plans()
            found = await run(plan_settings, corpus, org, query)
            assert plans()["ann"] == before["ann"] + 1
            assert len(found) == K
            recalls.append(recall(found, exact_neighbours(corpus, org, query, K)))
    assert np.mean(recalls) >= 0.9, recalls


async def test_when_the_index_finds_too_few_the_search_runs_exactly(plan_settings, corpus: Corpus):
    mid = corpus.org_names.index("mid")
    for query in own_cluster_queries(corpus, 0, 3):  # deep in the big org's own cluster
        before = plans()
        found = await run(plan_settings, corpus, mid, query)
        assert plans()["ann_fallback"] == before["ann_fallback"] + 1
        assert found == exact_neighbours(corpus, mid, query, K)


async def test_some_recordings_are_searched_exactly(plan_settings, corpus: Corpus):
    big = 0
    rows = corpus.rows_of(big)
    recording = corpus.recording_of_row[int(rows[0])]
    in_recording = [int(i) for i in rows if corpus.recording_of_row[int(i)] == recording]
    query = corpus.vectors[in_recording[0]]
    before = plans()
    found = await run(plan_settings, corpus, big, query, rids=[recording])
    assert plans()["exact"] == before["exact"] + 1
    distances = 1.0 - corpus.vectors[in_recording] @ query
    expected = [corpus.chunk_ids[in_recording[i]] for i in np.argsort(distances, kind="stable")]
    assert found == expected[:K]
