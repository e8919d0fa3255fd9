"""/livez: the process answers. /readyz: it can serve (database reachable, schema at head).

Readiness fails only for what no request can be served without. Valkey is not one of them: the
rate limiter fails open and the caches are optional, so Valkey down answers 200 with the body
saying "degraded". Otherwise one Valkey hiccup would take every API pod out of rotation at once.

/readyz answers within ``CHECK_TIMEOUT`` whatever the dependencies do, under the readiness
probe's own timeout: a probe that times out counts as a failure, and a pool saturated by load
would otherwise hold the check in its queue until the kubelet gave up and pulled a pod that was
busy serving.

/api/health is readiness for whoever is outside the cluster (``record smoke``, an uptime
check): the public ingress routes only its public paths (infra/api.py ``PUBLIC_PATHS``), never
/readyz. It answers what /readyz does, status and code, without the checks' details (schema
revisions, pool sizes, error text are for operators), counts against the per-IP ``anonymous``
limit, and reuses one answer per process for ``PUBLIC_HEALTH_TTL``: a flood of it costs the
database nothing more than the probes do.

/metrics is for the cluster's Prometheus; the public ingress never routes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from app.kit.context import current_request_id
from app.kit.db import Conn, libpq_conninfo
from app.kit.deps import get_services
from app.kit.errors import PROBLEM_JSON, ServiceUnavailableError
from app.kit.metrics import render_latest
from app.kit.migrate import head_revisions
from app.kit.ratelimit import rate_limit
from app.kit.roles import APP_ROLE
from app.kit.services import Services

router = APIRouter(tags=["health"])

# The whole check's budget: under the readiness probe's timeoutSeconds (2 s in
# infra/api.py), so the probe reads our answer rather than timing out.
CHECK_TIMEOUT = 1.5
# How long the check queues for a pooled connection before it opens one of its own: a healthy
# pool hands one over in microseconds, so waiting longer only means every one is busy.
POOL_WAIT = 0.2
# The checks without which the API serves nothing; any other failing check is "degraded".
REQUIRED = frozenset({"database"})
# What a degraded dependency costs, for whoever reads the probe's body.
DEGRADED_IMPACT = {
    "redis": "rate limits fail open; search, transcript and embedding caches are off",
}
# How long one process reuses /api/health's answer: the readiness probe's period (5 s) is
# what the database sees from the kubelet anyway; a second adds at most one check a second.
PUBLIC_HEALTH_TTL = 1.0


class NotReadyError(ServiceUnavailableError):
    code = "not_ready"


@router.get("/livez")
async def livez() -> dict[str, str]:
    # Touches nothing: a dependency's outage must never get a healthy process restarted.
    return {"status": "alive"}


async def _timed(check: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check, CHECK_TIMEOUT)
        return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1), **detail}
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT}s"}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _revisions(conn: Conn) -> set[str]:
    cur = await conn.execute("SELECT version_num FROM alembic_version")
    return {row["version_num"] for row in await cur.fetchall()}


async def _revisions_unpooled(services: Services) -> set[str]:
    """The revisions read over a connection of the check's own, outside the pool."""
    conn = await psycopg.AsyncConnection.connect(
        libpq_conninfo(services.settings.database_url),
        autocommit=True,
        row_factory=dict_row,
        application_name="record-readyz",
    )
    try:
        # The role the pool's connections act as (app/kit/db.py): the same rights they have.
        await conn.execute(f"SET ROLE {APP_ROLE}")
        return await _revisions(conn)
    finally:
        await conn.close()


async def _database(services: Services) -> dict[str, Any]:
    pool = services.db.pool
    try:
        async with pool.connection(timeout=POOL_WAIT) as conn:
            current = await _revisions(conn)
        via = "pool"
    except PoolTimeout:
        # Every pooled connection is in use (or none can be made): a busy API is still one
        # that serves, so ask the database directly. If it is down this fails at once, and
        # if it hangs, the check's timeout answers.
        current = await _revisions_unpooled(services)
        via = "direct"
    expected = head_revisions()
    if current != expected:
        raise RuntimeError(
            f"schema at {sorted(current) or 'nothing'}, code expects {sorted(expected)}: "
            "run `record db upgrade`"
        )
    stats = pool.get_stats()
    return {
        "revision": sorted(current),
        "via": via,
        "pool": {
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
        },
    }


async def _redis(services: Services) -> dict[str, Any]:
    await services.redis.ping()
    return {}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "The database is unreachable or its schema is not at the code's head.",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    checks = await _checks(get_services(request))
    return _readiness_response(request, checks, detailed=True)


@dataclass
class _Checked:
    expires: float
    checks: dict[str, dict[str, Any]]


@router.get(
    "/api/health",
    dependencies=[Depends(rate_limit("anonymous"))],
    responses={
        200: {
            "description": "Ready, or degraded (Valkey down: served without caches).",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"status": {"enum": ["ready", "degraded"]}},
                        "required": ["status"],
                    }
                }
            },
        },
        503: {
            "description": "Not ready: the database is unreachable or its schema is behind.",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        },
    },
)
async def public_health(request: Request) -> JSONResponse:
    """Readiness through the public URL: the status, no details."""
    # Per app, not per module: each app (and each test's) has its own dependencies.
    checked: _Checked | None = getattr(request.app.state, "public_health", None)
    if checked is None or checked.expires <= time.monotonic():
        checks = await _checks(get_services(request))
        checked = _Checked(time.monotonic() + PUBLIC_HEALTH_TTL, checks)
        request.app.state.public_health = checked
    return _readiness_response(request, checked.checks, detailed=False)


async def _checks(services: Services) -> dict[str, dict[str, Any]]:
    db_check, redis_check = await asyncio.gather(
        _timed(_database(services)), _timed(_redis(services))
    )
    return {"database": db_check, "redis": redis_check}


def _readiness_response(
    request: Request, checks: dict[str, dict[str, Any]], *, detailed: bool
) -> JSONResponse:
    failing = sorted(name for name, check in checks.items() if not check["ok"])
    if detailed:
        checks = {
            name: {**check, "impact": DEGRADED_IMPACT[name]}
            if name in failing and name in DEGRADED_IMPACT
            else check
            for name, check in checks.items()
        }
    if blocking := [name for name in failing if name in REQUIRED]:
        error = NotReadyError(
            f"Cannot serve without: {', '.join(blocking)}.", headers={"Retry-After": "5"}
        )
        body = error.problem(instance=request.url.path, request_id=current_request_id())
        return JSONResponse(
            {**body, "checks": checks} if detailed else body,
            status_code=error.status_code,
            headers=error.headers,
            media_type=PROBLEM_JSON,
        )
    status = "degraded" if failing else "ready"
    return JSONResponse({"status": status, "checks": checks} if detailed else {"status": status})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body, content_type = render_latest(get_services(request).settings.prometheus_multiproc_dir)
    return Response(body, media_type=content_type)
