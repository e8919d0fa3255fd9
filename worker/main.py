"""`record worker`: run the pipeline jobs, sweep for stalled ones, stop gracefully on SIGTERM.

procrastinate handles SIGINT/SIGTERM itself: it stops fetching new jobs and waits for the
running ones (up to ``shutdown_graceful_timeout``, then cancels them; ``PipelineRetry`` puts a
cancelled job straight back in the queue, whatever its attempts, and a long transcription
resumes from its cached pieces). A worker killed outright is found by the stalled-job sweep.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import structlog
from prometheus_client import REGISTRY

from app.ai.clients import ModelClients
from app.kit.db import Database
from app.kit.logging import configure_logging
from app.kit.redis import create_redis
from app.kit.sentry import configure_error_tracking, report_job_failures
from app.kit.storage import create_store
from app.mail.sender import create_mailer
from app.settings import Settings, get_settings
from worker.jobs import STATE, build_app, sweep
from worker.mail import MailDeps
from worker.pipeline import PipelineDeps
from worker.workdirs import remove_abandoned

log = structlog.stdlib.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


async def _sweep_forever(app: object, queue_db: Database, settings: Settings) -> None:
    interval = max(2.0, settings.job_stalled_seconds / 4)
    while True:
        try:
            await sweep(app, queue_db, settings)  # type: ignore[arg-type]
        except Exception:
            log.exception("sweep failed")
        await anyio.sleep(interval)


def serve_metrics(settings: Settings) -> Any:
    """/metrics for the cluster's Prometheus (PodMonitor on port ``metrics``); returns the
    server (None when disabled)."""
    if not settings.worker_metrics_port:
        return None
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as prom_multiprocess

    registry = None
    if settings.prometheus_multiproc_dir:
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=settings.prometheus_multiproc_dir
        )
    # All interfaces: Prometheus scrapes the pod from inside the cluster (NetworkPolicy decides
    # who may); locally this server is off.
    bind_all = "0.0.0.0"  # noqa: S104
    server, _thread = start_http_server(
        settings.worker_metrics_port, addr=bind_all, registry=registry or REGISTRY
    )
    return server


async def run_worker(settings: Settings | None = None, *, concurrency: int | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(level=settings.log_level, json=settings.is_production)
    configure_error_tracking(settings, component="worker")  # when SENTRY_DSN is set
    abandoned = remove_abandoned()
    if abandoned:
        log.warning("removed what killed pipeline attempts left", directories=len(abandoned))
    serve_metrics(settings)
    db = Database(
        settings,
        statement_timeout_ms=settings.worker_statement_timeout_ms,
        check_connections=True,
    )
    # The sweep keeps the login role (record_jobs' queue rights) instead of record_app's.
    queue_db = Database(settings, app_role=False, check_connections=True)
    await db.open()
    await queue_db.open()
    redis = create_redis(settings.redis_url, timeout=2.0)
    models = ModelClients.from_settings(settings)
    STATE.deps = PipelineDeps(
        settings=settings, db=db, store=create_store(settings), models=models, redis=redis
    )
    STATE.mail = MailDeps(settings=settings, db=db, mailer=create_mailer(settings))
    app = build_app(settings)
    try:
        async with app.open_async(), anyio.create_task_group() as tg:
            tg.start_soon(_sweep_forever, app, queue_db, settings)
            log.info("worker started", concurrency=concurrency or settings.worker_concurrency)
            await app.run_worker_async(
                concurrency=concurrency or settings.worker_concurrency,
                shutdown_graceful_timeout=SHUTDOWN_GRACE_SECONDS,
                update_heartbeat_interval=max(1.0, settings.job_stalled_seconds / 6),
                stalled_worker_timeout=settings.job_stalled_seconds,
                # A job that failed for good goes to Sentry (when SENTRY_DSN is set).
                worker_middleware=[report_job_failures],
            )
            tg.cancel_scope.cancel()
    finally:
        STATE.deps = None
        STATE.mail = None
        with contextlib.suppress(Exception):
            await models.aclose()
        await redis.aclose()
        await queue_db.close()
        await db.close()
        log.info("worker stopped")
