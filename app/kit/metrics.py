"""Prometheus metric families. Labels stay low-cardinality: route templates, never raw paths.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` makes every worker write its samples to files that
``/metrics`` aggregates (prometheus-client multiprocess mode). Dashboards and alert rules name
only the families defined here; ``tests/infra`` compares them with this registry.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

log = logging.getLogger(__name__)

NAMESPACE = "record"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
HTTP_UNHANDLED = Counter(
    "http_unhandled_errors_total",
    "Programmer errors: exceptions that escaped a route.",
    ["route"],
    namespace=NAMESPACE,
)
JOBS = Counter(
    "jobs_total",
    "Background jobs finished.",
    ["type", "status"],
    namespace=NAMESPACE,
)
JOB_DURATION = Histogram(
    "job_duration_seconds",
    "Time a background job ran.",
    ["type"],
    namespace=NAMESPACE,
    buckets=JOB_BUCKETS,
)
JOB_QUEUE_AGE = Gauge(
    "job_queue_oldest_age_seconds",
    "Age of the oldest job waiting in a queue.",
    ["queue"],
    namespace=NAMESPACE,
    multiprocess_mode="max",
)
DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "Time a database query took.",
    ["operation", "table"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
DB_SLOW_QUERIES = Counter(
    "db_slow_queries_total",
    "Queries slower than SLOW_QUERY_MS.",
    ["operation", "table"],
    namespace=NAMESPACE,
)
EXTERNAL_CALLS = Counter(
    "external_calls_total",
    "Calls to services outside the process.",
    ["service", "operation", "status"],
    namespace=NAMESPACE,
)
EXTERNAL_DURATION = Histogram(
    "external_call_duration_seconds",
    "Time a call to an outside service took.",
    ["service", "operation"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
LLM_TOKENS = Counter(
    "llm_tokens_total",
    "Tokens sent to or received from a model.",
    ["model", "operation", "kind"],
    namespace=NAMESPACE,
)
LLM_DURATION = Histogram(
    "llm_request_duration_seconds",
    "Time a model call took.",
    ["model", "operation"],
    namespace=NAMESPACE,
    buckets=JOB_BUCKETS,
)
STORAGE_OPS = Counter(
    "storage_operations_total",
    "Object storage operations.",
    ["op", "status"],
    namespace=NAMESPACE,
)
STORAGE_BYTES = Counter(
    "storage_bytes_total",
    "Bytes moved to or from object storage.",
    ["op"],
    namespace=NAMESPACE,
)
CACHE_REQUESTS = Counter(
    "cache_requests_total",
    "Cache look-ups.",
    ["cache", "result"],
    namespace=NAMESPACE,
)
SEARCH_PLANS = Counter(
    "search_plans_total",
    "How vector searches ran: exact scan, HNSW index, or the index falling back to exact.",
    ["plan"],
    namespace=NAMESPACE,
)
REEMBED_CHUNKS = Counter(
    "reembed_chunks_total",
    "Chunks re-embedded into a new embedding space and written (worker/reindex.py).",
    namespace=NAMESPACE,
)
REEMBED_REMAINING = Gauge(
    "reembed_remaining_chunks",
    "Chunks the re-embed in progress has still to write (0: none in progress).",
    multiprocess_mode="livemax",
    namespace=NAMESPACE,
)
RATELIMIT_DECISIONS = Counter(
    "ratelimit_decisions_total",
    "Rate-limit decisions.",
    ["limiter", "decision"],
    namespace=NAMESPACE,
)
RATELIMIT_FAIL_OPEN = Counter(
    "ratelimit_fail_open_total",
    "Requests let through because Redis could not decide.",
    ["limiter", "reason"],
    namespace=NAMESPACE,
)

_KNOWN_TABLES = frozenset(
    {
        "orgs",
        "users",
        "memberships",
        "api_keys",
        "sessions",
        "recordings",
        "transcripts",
        "transcript_segments",
        "transcript_chunks",
        "documents",
        "conversations",
        "messages",
        "shares",
        "audit_log",
        "procrastinate_jobs",
    }
)
_OPERATION = re.compile(r"^\s*(?:with\b.*?\)\s*)?(select|insert|update|delete|copy)\b", re.I | re.S)
_TABLE = re.compile(r"\b(?:from|into|update|join|copy)\s+([a-z_][a-z0-9_]*)", re.I)


@functools.lru_cache(maxsize=1024)  # queries are a closed set of strings: parse each once
def query_labels(query: str) -> tuple[str, str]:
    """(operation, table) for a SQL statement, from a closed set of values."""
    op_match = _OPERATION.match(query)
    operation = op_match.group(1).lower() if op_match else "other"
    table = "other"
    for candidate in _TABLE.findall(query):
        if candidate.lower() in _KNOWN_TABLES:
            table = candidate.lower()
            break
    return operation, table


_slow_query_seconds = 1.0


def set_slow_query_threshold(ms: int) -> None:
    global _slow_query_seconds  # noqa: PLW0603 - one process-wide threshold, set at start-up
    _slow_query_seconds = ms / 1000


# ``labels()`` takes the family's lock and builds its key on every call; a request used to make
# five such calls (two HTTP, three queries). The children live as long as the process (nothing
# here removes one), so they are looked up once per label set; the caches are bounded because
# a client chooses the method it sends.
@functools.lru_cache(maxsize=1024)
def _query_duration(operation: str, table: str) -> Histogram:
    return DB_QUERY_DURATION.labels(operation, table)


@functools.lru_cache(maxsize=1024)
def http_request_metrics(method: str, route: str, status: str) -> tuple[Counter, Histogram]:
    """The (requests counter, duration histogram) children for one answered request."""
    return HTTP_REQUESTS.labels(method, route, status), HTTP_DURATION.labels(method, route)


def observe_query(query: str, seconds: float) -> None:
    operation, table = query_labels(query)
    _query_duration(operation, table).observe(seconds)
    if seconds >= _slow_query_seconds:
        DB_SLOW_QUERIES.labels(operation, table).inc()
        log.warning(
            "slow query", extra={"operation": operation, "table": table, "seconds": seconds}
        )


@contextmanager
def track_external(service: str, operation: str) -> Iterator[None]:
    started = time.perf_counter()
    status = "ok"
    try:
        yield
    except Exception:
        status = "error"
        raise
    finally:
        EXTERNAL_CALLS.labels(service, operation, status).inc()
        EXTERNAL_DURATION.labels(service, operation).observe(time.perf_counter() - started)


def render_latest(multiproc_dir: str | None) -> tuple[bytes, str]:
    """The exposition text: aggregated over gunicorn workers when multiprocess mode is on."""
    if multiproc_dir:
        registry = CollectorRegistry()
        # prometheus-client ships this constructor without annotations.
        prom_multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
