"""/livez: the process answers. /readyz: it can serve (database, Redis, schema at head).

/metrics is for the cluster's Prometheus; the public ingress never routes it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.kit.deps import get_services
from app.kit.metrics import render_latest
from app.kit.migrate import head_revisions

router = APIRouter(tags=["health"])
CHECK_TIMEOUT = 2.0


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


async def _timed(coro: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(coro, CHECK_TIMEOUT)
        return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1), **detail}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    services = get_services(request)

    async def database() -> dict[str, Any]:
        async with services.db.pool.connection() as conn:
            cur = await conn.execute("SELECT version_num FROM alembic_version")
            current = {row["version_num"] for row in await cur.fetchall()}
        expected = head_revisions()
        if current != expected:
            raise RuntimeError(
                f"schema at {sorted(current) or 'nothing'}, code expects {sorted(expected)}: "
                "run `record db upgrade`"
            )
        return {"revision": sorted(current)}

    async def redis() -> dict[str, Any]:
        await services.redis.ping()
        return {}

    db_check, redis_check = await asyncio.gather(_timed(database()), _timed(redis()))
    checks = {"database": db_check, "redis": redis_check}
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body, content_type = render_latest(get_services(request).settings.prometheus_multiproc_dir)
    return Response(body, media_type=content_type)
