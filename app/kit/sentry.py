"""Error tracking with Sentry: on when SENTRY_DSN is set, absent otherwise.

Sentry gets what broke: an error no route handled (``UnhandledErrorMiddleware`` reports it, with
the request as the FastAPI integration describes it) and a job that failed for good
(``report_job_failures``, a procrastinate worker middleware: procrastinate has no integration of
its own). Log lines are breadcrumbs, not events. Traces stay on OpenTelemetry
(app/kit/tracing.py): no transaction is recorded and no trace header is sent.

What leaves is what the logs keep. No request body, cookie, client address or local variable is
collected (the logs have none of them either), and every event goes through the logs' own
redaction (``app.kit.logging.redact``: tokens, API keys, share ids, emails, Authorization and
Cookie headers, secrets in query strings) before it is sent.

The SDK is imported only when the DSN is set; ``report_exception`` looks it up in
``sys.modules``, so a process without Sentry neither imports nor pays for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from app.kit.logging import redact
from app.settings import Settings

if TYPE_CHECKING:
    from procrastinate import JobContext
    from procrastinate.worker import Worker
    from sentry_sdk.transport import Transport


def release(settings: Settings) -> str:
    """The image's release (RECORD_RELEASE, baked in at build), else the package's version."""
    if settings.record_release:
        return settings.record_release
    try:
        return f"record@{metadata.version('record')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "record@unknown"


def environment(settings: Settings) -> str:
    return settings.sentry_environment or settings.environment.value


def configure_error_tracking(
    settings: Settings, *, component: str, transport: Transport | None = None
) -> bool:
    """Start Sentry for this process when SENTRY_DSN is set; whether it did. ``transport``
    replaces the network (the tests keep the envelopes in memory)."""
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else ""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    sentry_sdk.init(
        dsn=dsn,
        release=release(settings),
        environment=environment(settings),
        integrations=[
            # Events are named by the route template (/s/{share_id}), never the path.
            StarletteIntegration(transaction_style="url"),
            FastApiIntegration(transaction_style="url"),
            # Log lines travel as breadcrumbs; an error line is not an event of its own (the
            # failure it reports is captured where it happens, once).
            LoggingIntegration(level=logging.INFO, event_level=None),
        ],
        # Traces are OpenTelemetry's: no transactions, and no sentry-trace/baggage headers on
        # outgoing requests beside OpenTelemetry's traceparent.
        traces_sample_rate=None,
        # Only the integrations above (and the SDK's defaults): the auto-enabled ones would wrap
        # every Redis command on the rate limiter's path and every model call, for breadcrumbs.
        auto_enabling_integrations=False,
        trace_propagation_targets=[],
        # send_default_pii left unset: no cookies, client addresses or user ids (setting it,
        # even to False, is deprecated in favour of data_collection).
        max_request_body_size="never",
        include_local_variables=False,
        in_app_include=["app", "worker"],
        before_send=scrub_event,
        before_breadcrumb=structlog_breadcrumb,
        transport=transport,
    )
    sentry_sdk.get_global_scope().set_tag("component", component)
    return True


def scrub_event(event: Any, hint: Mapping[str, Any]) -> Any:
    """``before_send``: the event as the log redaction leaves a line, every part of it (the
    request, the exception's text, the breadcrumbs, the tags)."""
    return redact(event)


def structlog_breadcrumb(crumb: Any, hint: Mapping[str, Any]) -> Any:
    """``before_breadcrumb``: structlog hands the stdlib its line as a dict (its
    ``ProcessorFormatter``); the breadcrumb gets the line's text as its message and the line's
    fields as its data, instead of the dict's repr."""
    record = hint.get("log_record")
    fields = getattr(record, "msg", None)
    if isinstance(fields, Mapping):
        crumb["message"] = str(fields.get("event", ""))
        crumb["data"] = {k: v for k, v in fields.items() if k != "event" and not k.startswith("_")}
    return crumb


def report_exception(exc: BaseException, *, tags: Mapping[str, str] | None = None) -> None:
    """Send ``exc`` to Sentry, when this process started it (else nothing, not even an import)."""
    sdk = sys.modules.get("sentry_sdk")
    if sdk is None or not sdk.get_client().is_active():
        return
    with sdk.new_scope() as scope:
        for key, value in (tags or {}).items():
            scope.set_tag(key, value)
        sdk.capture_exception(exc)


async def report_job_failures(
    call_next: Callable[[], Awaitable[Any]], context: JobContext, worker: Worker
) -> Any:
    """A procrastinate worker middleware: report a job that failed for good, the way the
    worker records it (its retry strategy gave up). A failure to be retried, a job cancelled by
    a shutdown or aborted on request is not reported. The job's arguments are not sent: they
    hold addresses and mailed links."""
    try:
        return await call_next()
    except Exception as exc:
        from procrastinate.exceptions import JobAborted

        job = context.job
        task = context.task
        retried = task is not None and task.get_retry_exception(exception=exc, job=job) is not None
        if not retried and not isinstance(exc, JobAborted):
            report_exception(
                exc,
                tags={
                    "job.task": job.task_name,
                    "job.queue": job.queue,
                    "job.id": str(job.id),
                    "job.attempts": str(job.attempts + 1),
                },
            )
        raise
