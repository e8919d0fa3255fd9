"""Vector search under tenant filtering: recall and latency of each plan against the exact scan
(the baseline: recall 1.0 by definition), measured in the same run.

    .venv/bin/python -m bench.search [--rows 100000] [--queries 40] [--k 10] [--api]

A million rows, built once and reused: generation, COPY and the HNSW build took 40 minutes
on 2 cores shared with other work (the index alone 2284 s; 483 s on an idle machine), and a
``--halfvec`` index as much again. Each later run fits a 10-minute command:

    .venv/bin/python -m bench.search --rows 1000000 --data-dir ~/.cache/record-bench/1m \\
        --build-only                                # once: writes <data-dir>/manifest.json
    .venv/bin/python -m bench.search --rows 1000000 --data-dir ~/.cache/record-bench/1m \\
        --queries 20 --exact-queries 5 --ann-min-rows 20000 \\
        --ways exact,planner,iter200,iter400,iter800,record --api   # each measurement

``--data-dir`` holds the PostgreSQL cluster (migrated to head on every run), ``manifest.json``
(rows, seed, shares, HNSW ``m``/``ef_construction``, the steps done with their seconds, the
index sizes) and the corpus as numpy files for the exact answers (1.6 GB at 1M). A run with the
same rows, seed and index parameters reuses it; another asks for another directory; a build
that did not reach ANALYZE must be removed and made again. A build stopped during the
``--halfvec`` index (``pg_cancel_backend`` of its backend) leaves a usable directory without it.

The corpus is ``rows`` 384-dim unit vectors in tight clusters over orgs holding 60%, 25%, 10%,
4%, 0.9% and 0.1% of the rows; half of each org's rows sit in clusters every org shares (people
talk about the same things), half in its own. Queries are rows of the org, perturbed. Tight
isotropic clusters are a hard case for a graph index (within a cluster every row is about as
near as any other), harder than real embeddings. Every search runs as the application role
under row-level security, scoped to one org. The plans, per org and query (``--ways``):

* ``exact``: the org's rows sorted by distance (``repository.nearest_exact``), the baseline;
  run for ``--exact-queries`` of the queries (a 600k-row scan takes a second);
* ``planner``: the per-org planner of main before #17: exact below ``SEARCH_EXACT_MAX_CHUNKS``,
  else the org's rows among the index's ``ef_search`` nearest (post-filtered, at least 200),
  falling back to exact when too few;
* ``iter<ef>[x<n>]``: pgvector 0.8's iterative scan, ``hnsw.iterative_scan =
  relaxed_order`` at ``hnsw.ef_search = ef``, on the whole org (RLS and ``WHERE org_id``),
  collecting n x k of the org's rows (default 1) and keeping the best k;
* ``half<ef>[x<n>]``: the same on a ``halfvec`` expression index (``--halfvec``: half the
  memory), n x k candidates (default ``RERANK``) re-ranked by the full-precision distance;
* ``record``: ``app.search.service.nearest``, what the code does now.

With ``--api`` the same queries go through ``POST /api/search`` (mode ``vector``) of the app
in-process, the model server included: the query text is embedded by the real MiniLM (its cost
is in the figure), and the bench's model transport then answers with the synthetic query vector
so that recall is judged on the synthetic corpus. Each way gets its own query texts (no cache
hits). The first query of each org runs every way once untimed (caches, connections). It
prints recall@k and p95 per org and way, the lowest recall and highest p95 per way, the plans
``record`` took, and the load average: p95 on 2 shared cores moves with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

DIMS = 384
SHARES = {"org 60%": 0.60, "org 25%": 0.25, "org 10%": 0.10, "org 4%": 0.04, "org 0.9%": 0.009}
SHARES["org 0.1%"] = 1.0 - sum(SHARES.values())
CHUNKS_PER_RECORDING = 100
RERANK = 4  # halfvec plans fetch RERANK * k candidates by the index, then rank them exactly
HALFVEC_INDEX = "bench_chunks_embedding_half_idx"
PASSWORD = "plum-tide-orbit-velvet-42"


@dataclass
class Corpus:
    vectors: np.ndarray  # (rows, 384) float32, unit length
    org_of_row: np.ndarray  # index into org_ids
    org_ids: list[uuid.UUID]
    org_names: list[str]
    chunk_ids: list[uuid.UUID]
    recording_of_row: list[uuid.UUID]
    in_own_cluster: np.ndarray  # True where the row sits in one of its org's own clusters
    _rows: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def rows_of(self, org: int) -> np.ndarray:
        if org not in self._rows:
            self._rows[org] = np.flatnonzero(self.org_of_row == org)
        return self._rows[org]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _uuids(rng: np.random.Generator, count: int) -> list[uuid.UUID]:
    """Random (version 4) ids from the seed: a reused data directory has the same ids."""
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def synthetic_corpus(
    rows: int,
    shares: dict[str, float] | None = None,
    *,
    shared_clusters: int = 20,
    own_clusters: int = 10,
    spread: float = 0.35,
    seed: int = 7,
) -> Corpus:
    """Clustered unit vectors over orgs; half of each org's rows in clusters all orgs share."""
    shares = shares or SHARES
    rng = np.random.default_rng(seed)
    names = list(shares)
    counts = [max(1, round(rows * shares[name])) for name in names]
    common = _unit(rng.standard_normal((shared_clusters, DIMS)))
    parts, owners, owned = [], [], []
    for org, count in enumerate(counts):
        own = _unit(rng.standard_normal((own_clusters, DIMS)))
        in_own = rng.random(count) >= 0.5
        centres = np.where(
            in_own[:, None],
            own[rng.integers(0, own_clusters, count)],
            common[rng.integers(0, shared_clusters, count)],
        )
        noise = rng.standard_normal((count, DIMS), dtype=np.float32) * (spread / np.sqrt(DIMS))
        parts.append(_unit(centres + noise))
        del centres, noise
        owners.append(np.full(count, org))
        owned.append(in_own)
    order = rng.permutation(sum(counts))  # interleave orgs, as uploads arrive
    vectors = np.concatenate(parts)[order]
    del parts
    org_of_row = np.concatenate(owners)[order]
    org_ids = _uuids(rng, len(names))
    chunk_ids = _uuids(rng, len(vectors))
    recording_ids = iter(_uuids(rng, len(vectors) // CHUNKS_PER_RECORDING + len(names)))
    recording_of_row: list[uuid.UUID] = []
    current: dict[int, tuple[uuid.UUID, int]] = {}
    for org in org_of_row.tolist():
        recording, used = current.get(org) or (next(recording_ids), 0)
        if used == CHUNKS_PER_RECORDING:
            recording, used = next(recording_ids), 0
        current[org] = (recording, used + 1)
        recording_of_row.append(recording)
    return Corpus(
        vectors=vectors,
        org_of_row=org_of_row,
        org_ids=org_ids,
        org_names=names,
        chunk_ids=chunk_ids,
        recording_of_row=recording_of_row,
        in_own_cluster=np.concatenate(owned)[order],
    )


def _ids_array(ids: list[uuid.UUID]) -> np.ndarray:
    return np.frombuffer(b"".join(i.bytes for i in ids), dtype=np.uint8).reshape(-1, 16)


def _ids_list(raw: np.ndarray) -> list[uuid.UUID]:
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def save_corpus(path: Path, corpus: Corpus) -> None:
    """What measuring needs (vectors, owners, ids): loads in seconds where regenerating a
    million rows takes minutes on a busy machine."""
    np.save(path / "vectors.npy", corpus.vectors)
    np.savez(
        path / "corpus.npz",
        org_of_row=corpus.org_of_row,
        org_ids=_ids_array(corpus.org_ids),
        chunk_ids=_ids_array(corpus.chunk_ids),
        in_own_cluster=corpus.in_own_cluster,
    )


def cached_corpus(path: Path | None, rows: int, seed: int) -> Corpus:
    """The corpus saved in a data directory, else regenerated (and saved there)."""
    if path is not None and (path / "corpus.npz").exists():
        saved = np.load(path / "corpus.npz")
        names = list(SHARES)
        return Corpus(
            vectors=np.load(path / "vectors.npy"),
            org_of_row=saved["org_of_row"],
            org_ids=_ids_list(saved["org_ids"]),
            org_names=names,
            chunk_ids=_ids_list(saved["chunk_ids"]),
            recording_of_row=[],  # not needed to measure
            in_own_cluster=saved["in_own_cluster"],
        )
    corpus = synthetic_corpus(rows, seed=seed)
    if path is not None:
        save_corpus(path, corpus)
    return corpus


# -- loading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexParams:
    m: int = 16  # the migration's (0001)
    ef_construction: int = 64
    maintenance_work_mem: str = "512MB"
    parallel_workers: int = 1


def _timed_index(conn: psycopg.Connection[Any], sql: str) -> float:
    started = time.perf_counter()
    conn.execute(sql)
    return time.perf_counter() - started


def load_corpus(
    url: str,
    corpus: Corpus,
    params: IndexParams | None = None,
    *,
    halfvec: bool = False,
    built: Callable[[str, float], None] | None = None,
) -> dict[str, float]:
    """Write the corpus as a superuser: orgs, recordings, chunks by binary COPY, then the HNSW
    index rebuilt in bulk (much faster than maintaining it row by row) and statistics; with
    ``halfvec``, a second HNSW index on ``embedding::halfvec(384)``. Returns seconds per step;
    ``built(step, seconds)`` is called as each finishes (the manifest records it)."""
    from pgvector.psycopg import register_vector

    params = params or IndexParams()
    took: dict[str, float] = {}

    def done(step: str, seconds: float) -> None:
        took[step] = seconds
        if built:
            built(step, seconds)

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"SET maintenance_work_mem = '{params.maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {params.parallel_workers}")
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orgs (id, name) VALUES (%s, %s)",
                list(zip(corpus.org_ids, corpus.org_names, strict=True)),
            )
            recordings = dict.fromkeys(
                zip(
                    corpus.recording_of_row,
                    (corpus.org_ids[o] for o in corpus.org_of_row.tolist()),
                    strict=True,
                )
            )
            cur.executemany(
                "INSERT INTO recordings (id, org_id, title, status) VALUES (%s, %s, %s, 'ready')",
                [(rid, oid, f"Meeting {n}") for n, (rid, oid) in enumerate(recordings)],
            )
        conn.execute("DROP INDEX transcript_chunks_embedding_hnsw_idx")
        columns = "id, org_id, recording_id, idx, text, token_count, start_seconds, end_seconds"
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(
                f"COPY transcript_chunks ({columns}, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(
                ["uuid", "uuid", "uuid", "int8", "text", "int8", "float8", "float8", "vector"]
            )
            org_ids = corpus.org_ids
            for i, (org, vector) in enumerate(
                zip(corpus.org_of_row.tolist(), corpus.vectors, strict=True)
            ):
                copy.write_row(
                    (
                        corpus.chunk_ids[i],
                        org_ids[org],
                        corpus.recording_of_row[i],
                        i,
                        f"passage {i}",
                        2,
                        float(i),
                        i + 1.0,
                        vector,
                    )
                )
        done("copy", time.perf_counter() - started)
        done(
            "hnsw",
            _timed_index(
                conn,
                "CREATE INDEX transcript_chunks_embedding_hnsw_idx ON transcript_chunks "
                f"USING hnsw (embedding vector_cosine_ops) "
                f"WITH (m = {params.m}, ef_construction = {params.ef_construction})",
            ),
        )
        # What autovacuum keeps up in production: statistics for the planner and the search's
        # plan choice (app_chunk_stats), and the visibility map for index-only scans.
        conn.execute("VACUUM ANALYZE transcript_chunks")
        done("analyze", 0.0)
        if halfvec:
            done(
                "hnsw_halfvec",
                _timed_index(
                    conn,
                    f"CREATE INDEX {HALFVEC_INDEX} ON transcript_chunks "
                    f"USING hnsw ((embedding::halfvec({DIMS})) halfvec_cosine_ops) "
                    f"WITH (m = {params.m}, ef_construction = {params.ef_construction})",
                ),
            )
    return took


def index_sizes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexrelname, pg_size_pretty(pg_relation_size(indexrelid)) "
            "FROM pg_stat_user_indexes WHERE relname = 'transcript_chunks'"
        ).fetchall()
        table = conn.execute("SELECT pg_size_pretty(pg_table_size('transcript_chunks'))").fetchone()
    sizes = {str(name): str(size) for name, size in rows}
    sizes["table"] = str(table[0]) if table else "?"
    return sizes


# -- the servers ---------------------------------------------------------------------------------


def _start(base: Path, pg_dir: Path, extra: dict[str, str]) -> tuple[Any, Any, Any, Any]:
    from app.devstack.servers import PostgresServer, ValkeyServer, service_user_kwargs
    from bench.stack import wait_for
    from testkit import free_port

    pg = PostgresServer(data_dir=pg_dir / "pg", socket_dir=pg_dir / "run")
    pg.initdb()
    pg_proc = subprocess.Popen(
        pg.command(extra={"fsync": "off", "synchronous_commit": "off", **extra}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **service_user_kwargs(),
    )
    wait_for(pg.is_ready, "PostgreSQL", timeout=300)  # a reused cluster may replay its WAL
    valkey = ValkeyServer(data_dir=base / "valkey", port=free_port(), password="bench-only")
    valkey_proc = subprocess.Popen(
        valkey.command(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def valkey_ready() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(valkey.url).ping())
        except redis.RedisError:
            return False

    wait_for(valkey_ready, "Valkey")
    return pg, pg_proc, valkey, valkey_proc


@dataclass
class Stack:
    settings: Any
    superuser_url: str
    manifest: dict[str, Any]
    data_dir: Path | None  # --data-dir: the corpus is saved there


def _manifest_key(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rows": args.rows,
        "seed": args.seed,
        "shares": SHARES,
        "m": args.m,
        "ef_construction": args.ef_construction,
    }


@contextlib.contextmanager
def search_stack(args: argparse.Namespace) -> Iterator[Stack]:
    """PostgreSQL holding the corpus, and Valkey: in ``--data-dir`` when given (built on first
    use, reused after), else in a temporary directory removed afterwards."""
    from app.kit.migrate import upgrade
    from app.settings import Settings

    base = Path(tempfile.mkdtemp(prefix="record-bench-search-"))
    data = Path(args.data_dir).expanduser() if args.data_dir else base
    manifest_path = data / "manifest.json"
    manifest: dict[str, Any] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != _manifest_key(args):
            raise SystemExit(
                f"{data} holds another corpus ({manifest.get('key')}); "
                "name another --data-dir or remove this one"
            )
        if "analyze" not in manifest.get("took", {}):
            raise SystemExit(f"{data}: an earlier build did not finish; remove it and build again")
    elif (data / "pg").exists():
        raise SystemExit(f"{data} has a cluster but no manifest: remove it and build again")
    data.mkdir(parents=True, exist_ok=True)
    server_settings = {
        "shared_buffers": args.shared_buffers,
        "effective_cache_size": "8GB",
        "max_parallel_workers_per_gather": "0",  # the latencies of one search, one core
    }
    pg, pg_proc, valkey, valkey_proc = _start(base, data, server_settings)
    try:
        url = pg.url("bench")
        if manifest:
            upgrade(url)  # a reused cluster follows the migrations
        else:
            pg.create_database("bench")
            upgrade(url)
            manifest = {"key": _manifest_key(args), "took": {}}
            corpus = synthetic_corpus(args.rows, seed=args.seed)
            save_corpus(data, corpus)

            def built(step: str, seconds: float) -> None:
                manifest["took"][step] = round(seconds, 1)
                manifest["indexes"] = index_sizes(url)
                manifest_path.write_text(json.dumps(manifest, indent=2))
                print(f"  {step}: {seconds:.1f} s", flush=True)

            params = IndexParams(
                m=args.m,
                ef_construction=args.ef_construction,
                maintenance_work_mem=args.maintenance_work_mem,
                parallel_workers=args.parallel_workers,
            )
            print(f"building {args.rows} rows into {data}", flush=True)
            load_corpus(url, corpus, params, halfvec=args.halfvec, built=built)
            del corpus
        yield Stack(
            Settings(
                database_url=url,
                redis_url=valkey.url,
                state_dir=base,
                log_level="WARNING",
                ratelimit_enabled=False,
                search_cache_ttl_seconds=0,
                **({"search_exact_max_chunks": args.exact_max} if args.exact_max else {}),
            ),
            url,
            manifest,
            data if args.data_dir else None,
        )
    finally:
        pg_proc.send_signal(signal.SIGINT)
        valkey_proc.terminate()
        pg_proc.wait(timeout=120)
        valkey_proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


# -- the plans -----------------------------------------------------------------------------------

# A plan: (conn, settings, org id, query vector, k) -> chunk ids, best first.
Way = Callable[[Any, Any, uuid.UUID, np.ndarray, int], Awaitable[list[uuid.UUID]]]


async def _ids(conn: Any, sql: str, params: dict[str, Any]) -> list[uuid.UUID]:
    cur = await conn.execute(sql, params)
    return [row["id"] for row in await cur.fetchall()]


async def way_exact(conn: Any, settings: Any, org_id: uuid.UUID, q: np.ndarray, k: int):
    from app.search import repository

    return [c.chunk_id for c in await repository.nearest_exact(conn, org_id, q, k)]


async def way_record(conn: Any, settings: Any, org_id: uuid.UUID, q: np.ndarray, k: int):
    from app.search.service import nearest

    return [c.chunk_id for c in await nearest(conn, settings, org_id, q, k, recording_ids=None)]


async def way_planner(conn: Any, settings: Any, org_id: uuid.UUID, q: np.ndarray, k: int):
    """The per-org planner of main before #17 (app/search/repository.py at 26c4ff4)."""
    from app.search import repository

    stats = await repository.chunk_stats(conn)
    share = stats.org_share
    exact_max = max(settings.search_exact_max_chunks, k)
    if share is None or share * stats.table_rows <= exact_max or share * 1000 < 4 * k:
        return await way_exact(conn, settings, org_id, q, k)
    ef = max(200, min(1000, math.ceil(4 * k / max(share, 1e-9))))
    await conn.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), set_config('enable_sort', 'off', true)",
        (str(ef),),
    )
    found = await _ids(
        conn,
        "SELECT id FROM ("
        "  SELECT id, org_id, embedding <=> %(q)s AS distance"
        "  FROM transcript_chunks ORDER BY embedding <=> %(q)s LIMIT %(ef)s"
        ") nearest WHERE org_id = %(org)s ORDER BY distance, id LIMIT %(k)s",
        {"q": q, "ef": ef, "org": org_id, "k": k},
    )
    await conn.execute("SELECT set_config('enable_sort', 'on', true)")
    if len(found) < k:
        return await way_exact(conn, settings, org_id, q, k)
    return found


async def _iterative(conn: Any, ef: int) -> None:
    await conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
        " set_config('hnsw.ef_search', %s, true), set_config('enable_sort', 'off', true)",
        (str(ef),),
    )


def way_iterative(ef: int, fetch: int = 1) -> Way:
    """``fetch`` > 1: the scan collects ``fetch`` x k of the org's rows, the best k are kept
    (more of the graph explored for the same ``ef_search``)."""

    async def way(conn: Any, settings: Any, org_id: uuid.UUID, q: np.ndarray, k: int):
        await _iterative(conn, ef)
        return await _ids(
            conn,
            "WITH nearest AS MATERIALIZED ("
            "  SELECT id, embedding <=> %(q)s AS distance FROM transcript_chunks"
            "  WHERE org_id = %(org)s ORDER BY embedding <=> %(q)s LIMIT %(fetch)s"
            ") SELECT id FROM nearest ORDER BY distance, id LIMIT %(k)s",
            {"q": q, "org": org_id, "k": k, "fetch": fetch * k},
        )

    return way


def way_halfvec(ef: int, fetch: int = RERANK) -> Way:
    async def way(conn: Any, settings: Any, org_id: uuid.UUID, q: np.ndarray, k: int):
        await _iterative(conn, ef)
        return await _ids(
            conn,
            "WITH candidates AS MATERIALIZED ("
            "  SELECT id, embedding FROM transcript_chunks WHERE org_id = %(org)s"
            f"  ORDER BY embedding::halfvec({DIMS}) <=> %(q)s::halfvec({DIMS}) LIMIT %(fetch)s"
            ") SELECT id FROM candidates ORDER BY embedding <=> %(q)s, id LIMIT %(k)s",
            {"q": q, "org": org_id, "k": k, "fetch": fetch * k},
        )

    return way


def way_named(name: str) -> Way:
    fixed: dict[str, Way] = {"exact": way_exact, "planner": way_planner, "record": way_record}
    if name in fixed:
        return fixed[name]
    kind, _, spec = name[:4], None, name[4:]
    ef, _, fetch = spec.partition("x")  # iter200x4: ef_search 200, 4 x k fetched
    if kind == "iter":
        return way_iterative(int(ef), int(fetch or 1))
    if kind == "half":
        return way_halfvec(int(ef), int(fetch or RERANK))
    raise SystemExit(f"no such way: {name}")


# -- measuring -----------------------------------------------------------------------------------


def exact_neighbours(corpus: Corpus, org: int, query: np.ndarray, k: int) -> list[uuid.UUID]:
    rows = corpus.rows_of(org)
    distances = 1.0 - corpus.vectors[rows] @ query
    best = rows[np.argsort(distances, kind="stable")[:k]]
    return [corpus.chunk_ids[i] for i in best]


def queries_for(corpus: Corpus, org: int, count: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed + org)
    rows = rng.choice(corpus.rows_of(org), size=count)
    noise = rng.standard_normal((count, DIMS)) * 0.2 / np.sqrt(DIMS)
    return _unit(corpus.vectors[rows] + noise)


def recall(found: list[uuid.UUID], truth: list[uuid.UUID]) -> float:
    return len(set(found) & set(truth)) / len(truth) if truth else 1.0


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


@dataclass
class Cell:
    recalls: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, found: list[uuid.UUID], truth: list[uuid.UUID], seconds: float) -> None:
        self.recalls.append(recall(found, truth))
        self.seconds.append(seconds)

    def text(self) -> str:
        if not self.seconds:
            return "-"
        return f"{statistics.mean(self.recalls):.3f} {1000 * p95(self.seconds):6.1f}"


Table = dict[str, dict[str, Cell]]  # org -> way -> cell


def plan_counts(since: dict[str, float] | None = None) -> dict[str, float]:
    """The service's plans so far (``record_search_plans_total``), or since ``since``."""
    from prometheus_client import REGISTRY

    now = {
        plan: REGISTRY.get_sample_value("record_search_plans_total", {"plan": plan}) or 0.0
        for plan in ("exact", "ann", "ann_fallback")
    }
    return {
        p: n - (since or {}).get(p, 0.0) for p, n in now.items() if n - (since or {}).get(p, 0.0)
    }


def skip(way: str, query: int, org_rows: int, args: Any) -> bool:
    """Exact beyond ``--exact-queries``; an index plan for an org below ``--ann-min-rows``."""
    if way == "exact":
        return query >= args.exact_queries
    return way[:4] in ("iter", "half") and org_rows < args.ann_min_rows


async def measure_sql(
    settings: Any, corpus: Corpus, queries: dict[int, np.ndarray], ways: list[str], args: Any
) -> Table:
    from app.kit.db import Database

    db = Database(settings, statement_timeout_ms=600_000)
    await db.open()
    table: Table = {}
    try:
        for org, name in enumerate(corpus.org_names):
            org_id = corpus.org_ids[org]
            table[name] = {way: Cell() for way in ways}
            before = plan_counts()
            for n, query in enumerate([queries[org][0], *queries[org]]):
                truth = exact_neighbours(corpus, org, query, args.k)
                for way in ways:
                    if skip(way, max(n - 1, 0), len(corpus.rows_of(org)), args):
                        continue
                    plan = way_named(way)
                    async with db.transaction(org_id=org_id) as conn:
                        started = time.perf_counter()
                        found = await plan(conn, settings, org_id, query, args.k)
                        took = time.perf_counter() - started
                    if n:  # the first pass warms caches and connections, untimed
                        table[name][way].add(found, truth, took)
            print(
                f"  {name}: " + "  ".join(f"{w} {c.text()}" for w, c in table[name].items()),
                f"record's plans: {plan_counts(before)}",
                flush=True,
            )
    finally:
        await db.close()
    return table


class SubstitutingTransport:
    """The model server in-process: embeds each text for real, then answers with the
    synthetic vector registered for it (``vectors``), so recall is judged on the corpus."""

    def __init__(self, app: object, vectors: dict[str, np.ndarray]) -> None:
        import httpx2

        self.inner = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        self.vectors = vectors
        self.seconds: list[float] = []

    async def handle_async_request(self, request: Any) -> Any:
        import base64

        import httpx2

        started = time.perf_counter()
        body = json.loads(await request.aread())
        response = await self.inner.handle_async_request(request)
        payload = json.loads(await response.aread())
        self.seconds.append(time.perf_counter() - started)
        for item, text in zip(payload["data"], body["input"], strict=True):
            vector = self.vectors[text].astype("<f4")
            if isinstance(item["embedding"], str):
                item["embedding"] = base64.b64encode(vector.tobytes()).decode()
            else:
                item["embedding"] = vector.tolist()
        return httpx2.Response(response.status_code, json=payload)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def reader_of_every_org(client: Any, superuser_url: str, corpus: Corpus) -> str:
    """A new user (a session token), made a reader of every org of the corpus."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    signup = await client.post(
        "/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "Bench"}
    )
    assert signup.status_code == 201, signup.text
    user_id, token = signup.json()["user"]["id"], signup.json()["session_token"]
    with psycopg.connect(superuser_url) as conn:
        for org_id in corpus.org_ids:
            conn.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (%s, %s, 'reader')",
                (org_id, user_id),
            )
    return str(token)


async def api_search(
    client: Any, headers: dict[str, str], text: str, k: int
) -> tuple[int, list[uuid.UUID], float]:
    started = time.perf_counter()
    response = await client.post(
        "/api/search", json={"query": text, "mode": "vector", "limit": k}, headers=headers
    )
    took = time.perf_counter() - started
    if response.status_code != 200:
        return response.status_code, [], took
    return 200, [uuid.UUID(h["chunk_id"]) for h in response.json()["results"]], took


async def measure_api(
    stack: Stack, corpus: Corpus, queries: dict[int, np.ndarray], ways: list[str], args: Any
) -> tuple[Table, list[float]]:
    """``POST /api/search`` per way, the plan patched into the service."""
    import httpx
    import httpx2
    from asgi_lifespan import LifespanManager

    from app.ai.clients import SERVICES_KEY, ModelClients
    from app.ai.local_models import LocalModels
    from app.ai.server import create_model_app
    from app.main import create_app
    from app.search import service

    settings = stack.settings.model_copy(
        update={"openai_base_url": "http://models.bench/v1", "openai_max_retries": 0}
    )
    texts: dict[str, np.ndarray] = {"warm up": queries[0][0]}
    transport = SubstitutingTransport(create_model_app(LocalModels(), preload=True), texts)
    api = create_app(settings)
    original = service.nearest
    table: Table = {}
    errors: Counter[int] = Counter()
    async with LifespanManager(api):
        clients = ModelClients.from_settings(
            settings,
            http_client=httpx2.AsyncClient(transport=transport),  # type: ignore[arg-type]
        )
        api.state.services.extras[SERVICES_KEY] = clients
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://b")
        token = await reader_of_every_org(client, stack.superuser_url, corpus)
        headers = {"Authorization": f"Bearer {token}", "X-Record-Org": str(corpus.org_ids[0])}
        for _ in range(2):  # the first loads the model (past the 2 s query timeout)
            await client.post(
                "/api/search", json={"query": "warm up", "mode": "vector"}, headers=headers
            )
        transport.seconds.clear()
        try:
            for org, name in enumerate(corpus.org_names):
                headers["X-Record-Org"] = str(corpus.org_ids[org])
                table[name] = {way: Cell() for way in ways}
                for n, query in enumerate(queries[org]):
                    truth = exact_neighbours(corpus, org, query, args.k)
                    for way in ways:
                        if skip(way, n, len(corpus.rows_of(org)), args):
                            continue
                        plan = way_named(way)

                        async def patched(conn, settings, org_id, vector, want, **_: Any):
                            from app.search.repository import Candidate

                            ids = await plan(conn, settings, org_id, vector, want)  # noqa: B023
                            return [Candidate(i, 0.0) for i in ids]

                        # "record" is the service as it is; another way is patched in.
                        service.nearest = original if way == "record" else patched  # type: ignore[assignment]
                        text = f"{way} {name} question {n}: what did we decide?"
                        texts[text] = query
                        status, found, took = await api_search(client, headers, text, args.k)
                        if status != 200:  # the 2 s query embedding timeout
                            errors[status] += 1
                            continue
                        table[name][way].add(found, truth, took)
                print(
                    f"  api {name}: " + "  ".join(f"{w} {c.text()}" for w, c in table[name].items())
                )
        finally:
            service.nearest = original
            if errors:
                print(f"  api errors (not counted): {dict(errors)}")
            await client.aclose()
            await clients.aclose()
    return table, transport.seconds


def print_table(title: str, table: Table, ways: list[str]) -> None:
    print(f"\n{title}\n(recall@k, p95 ms)")
    print(f"{'org':<10}" + "".join(f"{way:>16}" for way in ways))
    for org, cells in table.items():
        print(f"{org:<10}" + "".join(f"{cells[way].text():>16}" for way in ways))
    print(f"{'worst':<10}", end="")
    for way in ways:
        cells = [table[org][way] for org in table if table[org][way].seconds]
        low = min(statistics.mean(c.recalls) for c in cells)
        high = max(1000 * p95(c.seconds) for c in cells)
        print(f"{low:>9.3f} {high:6.1f}", end="")
    print()


async def run(args: argparse.Namespace, stack: Stack) -> None:
    # The machine's load goes with the figures: p95 on 2 shared cores moves with it.
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    started = time.perf_counter()
    corpus = cached_corpus(stack.data_dir, args.rows, args.seed)
    print(f"corpus ready in {time.perf_counter() - started:.1f} s", flush=True)
    queries = {org: queries_for(corpus, org, args.queries) for org in range(len(corpus.org_names))}
    ways = args.ways.split(",")
    sql = await measure_sql(stack.settings, corpus, queries, ways, args)
    size = f"{args.rows} chunks, {args.queries} queries per org ({args.exact_queries} exact)"
    print_table(f"SQL, {size}", sql, ways)
    if args.api:
        api_ways = args.api_ways.split(",")
        few = {org: q[: args.api_queries] for org, q in queries.items()}
        table, embed = await measure_api(stack, corpus, few, api_ways, args)
        print_table(
            f"POST /api/search, embedding included, {args.rows} chunks, "
            f"{args.api_queries} queries per org",
            table,
            api_ways,
        )
        print(
            f"the model server's embedding, per query: median {1000 * statistics.median(embed):.1f}"
            f" ms, p95 {1000 * p95(embed):.1f} ms"
        )
    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"indexes: {json.dumps(stack.manifest.get('indexes', {}))}")
    print(f"build: {json.dumps(stack.manifest.get('took', {}))}")


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40, help="per org")
    parser.add_argument("--exact-queries", type=int, default=10, help="per org, exact baseline")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", help="build once into this directory, reuse after")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--halfvec", action="store_true", help="build a halfvec index too")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--parallel-workers", type=int, default=1)
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--exact-max", type=int, default=None, help="SEARCH_EXACT_MAX_CHUNKS")
    parser.add_argument(
        "--ways",
        default="exact,planner,iter40,iter100,iter200,record",
        help="comma-separated: exact, planner, iter<ef>, half<ef>, record",
    )
    parser.add_argument(
        "--ann-min-rows", type=int, default=0, help="iter/half ways only for orgs this large"
    )
    parser.add_argument("--api", action="store_true", help="also through POST /api/search")
    parser.add_argument("--api-ways", default="planner,record")
    parser.add_argument("--api-queries", type=int, default=10, help="per org, through the API")
    return parser.parse_args(argv)


async def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    with search_stack(args) as stack:
        print(f"ready in {time.perf_counter() - started:.1f} s: {json.dumps(stack.manifest)}")
        if args.build_only:
            return
        await run(args, stack)


if __name__ == "__main__":
    asyncio.run(main())
