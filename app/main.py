"""The FastAPI application factory: ``create_app(settings)``; gunicorn calls it with none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.ai.clients import SERVICES_KEY as MODELS_KEY
from app.ai.clients import ModelClients
from app.kit.db import Database
from app.kit.logging import configure_logging
from app.kit.metrics import set_slow_query_threshold
from app.kit.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from app.kit.problems import UnhandledErrorMiddleware, install_error_handlers
from app.kit.ratelimit import SERVICES_KEY as RATELIMIT_KEY
from app.kit.ratelimit import RateLimiter, RateLimitHeadersMiddleware
from app.kit.redis import create_redis
from app.kit.sentry import configure_error_tracking
from app.kit.services import Services
from app.kit.tracing import configure_tracing
from app.settings import Environment, Settings, get_settings

API_DESCRIPTION = """
Record's HTTP API. Authenticate with `Authorization: Bearer <token>`: an org API key (`rk_...`),
a session token from `/api/auth/login` (`rs_...`, then name the org with `X-Record-Org`), or an
OIDC JWT. Errors are RFC 9457 `application/problem+json` with a `request_id`.
"""


def create_app(
    settings: Settings | None = None, *, model_transport: httpx2.AsyncBaseTransport | None = None
) -> FastAPI:
    """The app. ``model_transport`` replaces the network under the model clients (tests put an
    OpenAI fake there); by default they reach ``OPENAI_BASE_URL``."""
    settings = settings or get_settings()
    configure_logging(level=settings.log_level, json=settings.is_production)
    set_slow_query_threshold(settings.slow_query_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings)
        # Don't wait for the pool at start-up: /readyz says when the database is there.
        await db.open(wait=False)
        redis = create_redis(settings.redis_url)
        limiter = RateLimiter.from_settings(settings)
        # Search embeds queries; chat answers.
        models = ModelClients.from_settings(
            settings,
            http_client=httpx2.AsyncClient(transport=model_transport) if model_transport else None,
        )
        app.state.services = Services(
            settings=settings,
            db=db,
            redis=redis,
            extras={RATELIMIT_KEY: limiter, MODELS_KEY: models},
        )
        try:
            yield
        finally:
            await models.aclose()
            await limiter.aclose()
            await redis.aclose()
            await db.close()

    app = FastAPI(
        title="Record",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # Our own /docs (app/apidocs): FastAPI's loads a CDN and an inline script, and the CSP
        # refuses both. No ReDoc.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.serves_api_docs else None,
    )
    install_error_handlers(app)

    from app.apidocs.routes import router as api_docs_router
    from app.auth.routes import router as auth_router
    from app.chat.routes import router as chat_router
    from app.documents.routes import router as documents_router
    from app.health.routes import router as health_router
    from app.jobs.routes import router as jobs_router
    from app.orgs.routes import invitations as invitations_router
    from app.orgs.routes import router as orgs_router
    from app.recordings.routes import router as recordings_router
    from app.search.routes import router as search_router
    from app.shares.routes import public as public_shares_router
    from app.shares.routes import router as shares_router
    from app.transcripts.routes import router as transcripts_router

    for router in (
        health_router,
        auth_router,
        orgs_router,
        invitations_router,
        recordings_router,
        transcripts_router,
        documents_router,
        jobs_router,
        search_router,
        chat_router,
        shares_router,
        public_shares_router,
    ):
        app.include_router(router)
    if settings.serves_api_docs:
        app.include_router(api_docs_router)

    # Outermost last: request context → security headers → CORS → rate-limit headers → errors
    # → body limit → app.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        exempt=(("POST", "/api/recordings"),),  # streamed, with the upload cap
    )
    app.add_middleware(
        UnhandledErrorMiddleware,
        expose_errors=settings.environment is Environment.development,
    )
    app.add_middleware(RateLimitHeadersMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Record-Org", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.is_production)
    app.add_middleware(RequestContextMiddleware, skip_access_log=("/livez", "/readyz", "/metrics"))
    if settings.trusted_proxies:
        # Outermost: from here on request.client is the client our proxies saw (the limiter
        # counts it, the access log shows it), whatever server runs the app.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    # Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; imports OpenTelemetry only then.
    configure_tracing(app, settings)
    # Off unless SENTRY_DSN is set; imports sentry-sdk only then.
    configure_error_tracking(settings, component="api")
    return app
