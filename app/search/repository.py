"""SQL for search: candidates by vector and by words, then the hits themselves.

Tenant filtering is the design problem here. An HNSW index finds the nearest vectors of the
*whole table*; filtered by ``org_id`` after the scan, an org holding 1% of the rows gets almost
nothing back (recall 0.04 on pgvector 0.6, measured). pgvector 0.8's iterative scans keep
scanning the graph until they have found enough of the org's rows, which answers large orgs,
but a small org's rows are so rare in the graph that the scan gives up first (recall 0.78 at
p95 0.5 s for 100 chunks among 100k, ``python -m bench.search``). So the vector search picks
its plan by the size of what it searches:

* **exact**: the scope is some recordings, or an org of at most ``SEARCH_EXACT_MAX_CHUNKS``
  chunks. Its chunks are read through the ``(org_id, recording_id)`` btree and sorted by
  distance: recall 1.0, about 1.4 ms per thousand chunks here. The subquery's ``OFFSET 0`` is a
  fence that keeps the planner from answering the ``ORDER BY`` with the HNSW index.
* **ann**: a larger org, by pgvector's iterative HNSW scan (``relaxed_order``) under the
  org's row-level security; when the scan stops at ``MAX_SCAN_TUPLES`` short of the rows
  wanted, the search runs exactly instead (``ann_fallback``): approximate may miss, never
  return short.

The sizes come from the statistics ANALYZE keeps (``app_chunk_stats()``), not from counting:
a count is as slow as the scan it would avoid. An org missing from the most common values is
small, and stale statistics cost speed, never answers (too small an estimate: an exact scan;
too large: a fallback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import numpy as np

from app.kit.db import Conn, fetch_all, fetch_one

Plan = Literal["exact", "ann", "ann_fallback"]

# The iterative scan's hnsw.ef_search by the table's size. Recall@10 at a fixed ef falls as
# the graph grows (python -m bench.search, m 16, ef_construction 64, orgs of 4% to 60%): at
# 100k rows ef 200 gives 0.96-0.997; at 1M ef 200 gives 0.68-0.81, 400 0.72-0.89 and 800
# 0.79-0.95, for p95 70-190 ms on 2 busy cores (load 11). The graph is the limit there, not
# ef (1000 adds nothing): built with m 32 / ef_construction 128, 100k rows gave 0.98-0.993 at
# ef 40 (index 4% larger, build 1.7x as long).
EF_SEARCH_BY_TABLE_ROWS = ((200_000, 200), (math.inf, 800))
# How far one scan may go before it gives up (pgvector's default): it bounds the time an org
# whose rows the graph holds few of can cost, and the exact fallback answers that org.
MAX_SCAN_TUPLES = 20_000


@dataclass(frozen=True)
class Candidate:
    chunk_id: UUID
    score: float


def _scope_sql(recording_ids: Sequence[UUID] | None, alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    sql = f"{prefix}org_id = %(org_id)s"
    if recording_ids:
        sql += f" AND {prefix}recording_id = ANY(%(recording_ids)s)"
    return sql


@dataclass(frozen=True)
class ChunkStats:
    table_rows: float  # the planner's estimate, every tenant's rows
    org_share: float | None  # the caller's org's share, when it is among the most common


async def chunk_stats(conn: Conn) -> ChunkStats:
    """From the statistics ANALYZE keeps (migration 0003): no scan, no other tenant's figure."""
    row = await fetch_one(conn, "SELECT table_rows, org_share FROM app_chunk_stats()")
    if row is None:
        return ChunkStats(0.0, None)
    share = row["org_share"]
    return ChunkStats(float(row["table_rows"]), float(share) if share is not None else None)


def choose_plan(stats: ChunkStats, want: int, *, exact_max: int) -> Plan:
    """``exact`` or ``ann`` for a whole org: see the module's doc. (Some recordings, at most
    100, are always searched exactly: a bounded scan.)"""
    if stats.org_share is None:  # not among the most common values: a small share
        return "exact"
    return "exact" if stats.org_share * stats.table_rows <= exact_max else "ann"


def ef_search_for(stats: ChunkStats, want: int) -> int:
    """The iterative scan's ``hnsw.ef_search`` (never below what it returns)."""
    ef = next(ef for rows, ef in EF_SEARCH_BY_TABLE_ROWS if stats.table_rows <= rows)
    return max(ef, want)


async def nearest_exact(
    conn: Conn,
    org_id: UUID,
    vector: np.ndarray,
    want: int,
    recording_ids: Sequence[UUID] | None = None,
    *,
    relation: str = "transcript_chunks",  # the active embedding space's (app/search/spaces.py)
) -> list[Candidate]:
    rows = await fetch_all(
        conn,
        "SELECT id, distance FROM ("  # noqa: S608 - fixed SQL, values bound
        f"  SELECT id, embedding <=> %(vector)s AS distance FROM {relation}"
        f"  WHERE {_scope_sql(recording_ids)} AND embedding IS NOT NULL"
        "  OFFSET 0"  # the fence: never the HNSW index, whose candidates ignore the scope
        ") scoped ORDER BY distance, id LIMIT %(want)s",
        {
            "org_id": org_id,
            "recording_ids": list(recording_ids or []),
            "vector": vector,
            "want": want,
        },
    )
    return [Candidate(row["id"], 1.0 - float(row["distance"])) for row in rows]


async def nearest_ann(
    conn: Conn,
    org_id: UUID,
    vector: np.ndarray,
    want: int,
    *,
    ef_search: int,
    relation: str = "transcript_chunks",  # the active embedding space's (app/search/spaces.py)
) -> list[Candidate]:
    """The org's nearest rows by pgvector's iterative HNSW scan: row-level security (and the
    ``WHERE``) filter the scan, which goes on until it has ``want`` of the org's rows or has
    seen ``MAX_SCAN_TUPLES``. ``relaxed_order`` returns them about in order, so
    they are sorted again.

    The index is this plan's point, and the planner may not trade it for a sort: pgvector 0.8
    prices an HNSW scan's start far above 0.6 (1660 against 68 at 3,000 rows), so PostgreSQL 18
    would sort the org's rows (through the org_id btree) instead, an exact answer this plan did
    not choose. ``enable_sort`` is off for this one query, then as it was; so is the iterative
    scan."""
    was = await fetch_one(
        conn,
        "SELECT current_setting('enable_sort') AS enable_sort,"
        " set_config('hnsw.iterative_scan', 'relaxed_order', true),"
        " set_config('hnsw.ef_search', %s, true),"
        " set_config('hnsw.max_scan_tuples', %s, true),"
        " set_config('enable_sort', 'off', true)",
        (str(ef_search), str(MAX_SCAN_TUPLES)),
    )
    rows = await fetch_all(
        conn,
        "WITH nearest AS MATERIALIZED ("  # noqa: S608 - the relation's name is checked (spaces.py)
        f"  SELECT id, embedding <=> %(vector)s AS distance FROM {relation}"
        "  WHERE org_id = %(org_id)s ORDER BY embedding <=> %(vector)s LIMIT %(want)s"
        ") SELECT id, distance FROM nearest ORDER BY distance, id",
        {
            "org_id": org_id,
            "vector": vector,
            "want": want,
        },
    )
    await fetch_one(
        conn,
        "SELECT set_config('enable_sort', %s, true),"
        " set_config('hnsw.iterative_scan', 'off', true)",
        (str(was["enable_sort"]) if was else "on",),
    )
    return [Candidate(row["id"], 1.0 - float(row["distance"])) for row in rows]


async def by_words(
    conn: Conn,
    org_id: UUID,
    query: str,
    want: int,
    recording_ids: Sequence[UUID] | None = None,
) -> list[Candidate]:
    """Full-text matches, best first. ``websearch_to_tsquery`` takes what people type (quotes,
    ``or``, ``-word``) and never raises on it; normalisation 32 puts the rank in 0..1."""
    rows = await fetch_all(
        conn,
        "SELECT c.id, ts_rank_cd(c.tsv, q, 32) AS rank "  # noqa: S608 - fixed SQL, values bound
        "FROM transcript_chunks c, websearch_to_tsquery('english', %(query)s) q "
        f"WHERE {_scope_sql(recording_ids, 'c')} AND c.tsv @@ q "
        "ORDER BY rank DESC, c.id LIMIT %(want)s",
        {
            "org_id": org_id,
            "recording_ids": list(recording_ids or []),
            "query": query,
            "want": want,
        },
    )
    return [Candidate(row["id"], float(row["rank"])) for row in rows]


async def existing_recordings(conn: Conn, org_id: UUID, recording_ids: Sequence[UUID]) -> set[UUID]:
    rows = await fetch_all(
        conn,
        "SELECT id FROM recordings WHERE org_id = %s AND id = ANY(%s)",
        (org_id, list(recording_ids)),
    )
    return {row["id"] for row in rows}


async def hits(
    conn: Conn, org_id: UUID, chunk_ids: Sequence[UUID]
) -> dict[UUID, dict[str, object]]:
    """The chunks with their recording's current title, by id. Ids that are gone (a recording
    deleted since a cached answer was made) are simply absent."""
    rows = await fetch_all(
        conn,
        "SELECT c.id AS chunk_id, c.recording_id, r.title AS recording_title, c.text, "
        "c.start_seconds AS start, c.end_seconds AS end "
        "FROM transcript_chunks c "
        "JOIN recordings r ON r.org_id = c.org_id AND r.id = c.recording_id "
        "WHERE c.org_id = %s AND c.id = ANY(%s)",
        (org_id, list(chunk_ids)),
    )
    return {row["chunk_id"]: dict(row) for row in rows}
