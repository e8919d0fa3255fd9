"""Build an app with changed settings (production, CORS, a test-only route) and talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import create_app
from app.settings import Environment


@asynccontextmanager
async def running_app(
    settings: Any, *, customize: Callable[[FastAPI], None] | None = None, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``create_app(settings + changes)``, lifespan run, pool ready."""
    if "environment" in changes:
        # model_copy does not validate: the enum must be passed as the enum.
        changes["environment"] = Environment(changes["environment"])
    application = create_app(settings.model_copy(update=changes))
    if customize is not None:
        customize(application)
    async with LifespanManager(application) as manager:
        await application.state.services.db.pool.wait(timeout=10)
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.application = application  # type: ignore[attr-defined]
            yield http


def add_failing_route(app: FastAPI) -> None:
    """A route that fails like a programmer error would, with a secret-looking message."""

    @app.get("/api/test-only/boom/{thing_id}")
    async def boom(thing_id: str) -> None:
        raise RuntimeError(
            "SELECT * FROM users WHERE password = 'hunter2-secret' -- psycopg blew up"
        )
