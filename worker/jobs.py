"""procrastinate wiring: the App, the pipeline and org-purge tasks, their retry policy, the
stalled-job sweeper."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import procrastinate
import structlog
from procrastinate.jobs import Job, Status
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from app.ai.clients import ModelServerUnavailable
from app.jobs.queue import (
    MAIL_QUEUE,
    MAIL_TASK,
    MAINTENANCE_QUEUE,
    PIPELINE_QUEUE,
    PIPELINE_TASK,
    PURGE_ORG_TASK,
    MailKind,
)
from app.kit.db import Database, libpq_conninfo
from app.kit.metrics import JOB_DURATION, JOB_QUEUE_AGE, JOBS
from app.mail.sender import create_mailer
from app.settings import Settings
from worker.mail import MailDeps, deliver
from worker.pipeline import (
    PermanentError,
    PipelineDeps,
    RecordingGone,
    mark_failed,
    note_waiting_for_models,
    process_recording,
)
from worker.purge import purge_org
from worker.reindex import REEMBED_QUEUE, REEMBED_TASK, Batch, reembed_batch

log = structlog.stdlib.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300


class WaitingForModels(Exception):
    """A pipeline attempt met a model server outage and its window is still open: retry after
    ``wait_seconds``, however many attempts came before (the window bounds the waiting)."""

    def __init__(self, wait_seconds: int) -> None:
        super().__init__(f"waiting {wait_seconds}s for the model server")
        self.wait_seconds = wait_seconds


class PipelineRetry(BaseRetryStrategy):
    """Retry transient failures with exponential backoff; never retry a permanent one; wait
    out a model server outage (``WaitingForModels``) whatever the attempts."""

    def __init__(
        self, max_attempts: int, base_seconds: float = 2.0, outage_max_wait: float = 60.0
    ) -> None:
        self.max_attempts = max_attempts
        self.base_seconds = base_seconds
        self.outage_max_wait = outage_max_wait

    def is_last_attempt(self, attempts: int) -> bool:
        return attempts + 1 >= self.max_attempts

    def wait_seconds(self, attempts: int) -> int:
        return int(min(self.base_seconds * 2**attempts, MAX_BACKOFF_SECONDS))

    def outage_wait(self, attempts: int, remaining: float) -> int:
        """Doubling, capped at ``outage_max_wait`` (a model server back after a long outage is
        noticed within it), and never past the window's end (the last attempt is made at the
        end, not after it)."""
        doubled = self.base_seconds * 2 ** min(attempts, 30)
        return int(min(doubled, self.outage_max_wait, remaining))

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, asyncio.CancelledError):
            # A worker shutting down cancelled it (a deploy, a scale-in): not the recording's
            # fault, so it goes back to the queue at once, even on its last attempt.
            return RetryDecision(retry_in={"seconds": 0})
        if isinstance(exception, WaitingForModels):
            return RetryDecision(retry_in={"seconds": exception.wait_seconds})
        if isinstance(exception, PermanentError) or self.is_last_attempt(job.attempts):
            return None
        return RetryDecision(retry_in={"seconds": self.wait_seconds(job.attempts)})


class WorkerState:
    """What tasks need, built once when the worker starts (tasks are plain functions)."""

    deps: PipelineDeps | None = None
    mail: MailDeps | None = None


STATE = WorkerState()


def _add_mail_task(app: procrastinate.App, retry: PipelineRetry) -> None:
    @app.task(name=MAIL_TASK, queue=MAIL_QUEUE, retry=retry, pass_context=True)
    async def send_mail_task(context: procrastinate.JobContext, /, kind: str, **args: str) -> None:
        mail = STATE.mail
        if mail is None and STATE.deps is not None:
            deps = STATE.deps
            mail = MailDeps(deps.settings, deps.db, create_mailer(deps.settings))
        assert mail is not None, "the worker sets up its dependencies before running tasks"
        started = time.perf_counter()
        status = "failed"
        try:
            sent = await deliver(mail, MailKind(kind), args)
            status = "succeeded" if sent else "skipped"
        except Exception as exc:
            # No address or link in the log: the kind and the error are enough to act on.
            if retry.is_last_attempt(context.job.attempts):
                log.error("gave up sending a mail", kind=kind, error=type(exc).__name__)
            else:
                log.warning("mail not sent; will retry", kind=kind, error=type(exc).__name__)
            raise
        finally:
            JOBS.labels("send_mail", status).inc()
            JOB_DURATION.labels("send_mail").observe(time.perf_counter() - started)


def pipeline_retry(settings: Settings) -> PipelineRetry:
    return PipelineRetry(
        settings.job_max_attempts,
        settings.job_retry_base_seconds,
        settings.model_outage_retry_max_wait_seconds,
    )


async def first_started(db: Database, job_id: int) -> datetime | None:
    """When the job's first attempt started. The outage window counts from there: procrastinate
    keeps no reason per retry, and the first start is the earliest the outage can have begun
    for this job."""
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT min(at) AS at FROM procrastinate_events WHERE job_id = %s AND type = 'started'",
            (job_id,),
        )
        row: Any = await cur.fetchone()
    return row["at"] if row else None


async def wait_for_models(
    deps: PipelineDeps,
    retry: PipelineRetry,
    job: Job,
    exc: ModelServerUnavailable,
    *,
    org: UUID,
    recording: UUID,
) -> None:
    """Raise ``WaitingForModels`` while the outage window is open (the recording keeps its
    status and says what it waits for), else fail the recording, saying why."""
    assert job.id is not None
    now = datetime.now(UTC)
    began = await first_started(deps.db, job.id) or now
    window = deps.settings.model_outage_retry_seconds
    remaining = window - (now - began).total_seconds()
    if remaining > 0:
        wait = retry.outage_wait(job.attempts, remaining)
        await note_waiting_for_models(deps, org, recording, until=began + timedelta(seconds=window))
        log.warning(
            "model server unavailable; waiting for it",
            recording_id=str(recording),
            attempt=job.attempts + 1,
            retry_in=wait,
            gives_up_in=round(remaining),
            error=exc.detail,
        )
        raise WaitingForModels(wait) from exc
    reason = (
        f"The model server could not be reached for {_minutes(window)}; upload again or "
        f"reprocess once it is back. {exc.detail}"
    )
    await mark_failed(deps, org, recording, reason)
    raise PermanentError(reason) from exc


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


def build_app(settings: Settings) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=libpq_conninfo(settings.database_url),
        kwargs={"application_name": "record-worker"},
        min_size=1,
        max_size=max(2, settings.worker_concurrency + 1),
    )
    app = procrastinate.App(connector=connector)
    retry = pipeline_retry(settings)

    @app.task(
        name=PIPELINE_TASK,
        queue=PIPELINE_QUEUE,
        pass_context=True,
        retry=retry,
    )
    async def process_recording_task(
        context: procrastinate.JobContext, org_id: str, recording_id: str
    ) -> None:
        deps = STATE.deps
        assert deps is not None, "the worker sets up its dependencies before running tasks"
        job = context.job
        started = time.perf_counter()
        # Unless it ends otherwise below: a worker shutting down cancels the job, which goes
        # back to the queue (PipelineRetry retries a cancelled job at once).
        status = "cancelled"
        org, recording = UUID(org_id), UUID(recording_id)
        try:
            await process_recording(deps, org, recording)
            status = "succeeded"
        except RecordingGone:
            status = "skipped"
            log.info("recording deleted before its pipeline finished", recording_id=recording_id)
        except ModelServerUnavailable as exc:
            status = "waiting"
            try:
                await wait_for_models(deps, retry, job, exc, org=org, recording=recording)
            except PermanentError:
                status = "failed"
                raise
        except PermanentError as exc:
            status = "failed"
            await mark_failed(deps, org, recording, str(exc))
            raise
        except Exception as exc:
            if retry.is_last_attempt(job.attempts):
                status = "failed"
                await mark_failed(
                    deps,
                    org,
                    recording,
                    f"Gave up after {job.attempts + 1} attempts: {type(exc).__name__}: {exc}",
                )
            else:
                status = "retried"
                log.warning(
                    "pipeline attempt failed; will retry",
                    recording_id=recording_id,
                    attempt=job.attempts + 1,
                    error=f"{type(exc).__name__}: {exc}",
                )
            raise
        finally:
            JOBS.labels("process_recording", status).inc()
            JOB_DURATION.labels("process_recording").observe(time.perf_counter() - started)

    _add_purge_task(app, retry)
    _add_mail_task(app, retry)
    _add_reembed_task(app, retry)
    return app


def _add_reembed_task(app: procrastinate.App, retry: PipelineRetry) -> None:
    """One range of a re-embed (worker/reindex.py): idempotent, so a retry resumes it."""

    @app.task(name=REEMBED_TASK, queue=REEMBED_QUEUE, retry=retry)
    async def reembed_batch_task(generation: int, org_id: str, first_id: str, last_id: str) -> None:
        deps = STATE.deps
        assert deps is not None, "the worker sets up its dependencies before running tasks"
        started = time.perf_counter()
        status = "cancelled"
        try:
            batch = Batch(generation, UUID(org_id), UUID(first_id), UUID(last_id))
            await reembed_batch(deps, batch)
            status = "succeeded"
        except Exception:
            status = "retried"
            raise
        finally:
            JOBS.labels("reembed_batch", status).inc()
            JOB_DURATION.labels("reembed_batch").observe(time.perf_counter() - started)


def _add_purge_task(app: procrastinate.App, retry: PipelineRetry) -> None:
    """The deletion of what a deleted org left outside PostgreSQL (worker/purge.py)."""

    @app.task(name=PURGE_ORG_TASK, queue=MAINTENANCE_QUEUE, pass_context=True, retry=retry)
    async def purge_org_task(context: procrastinate.JobContext, org_id: str) -> None:
        deps = STATE.deps
        assert deps is not None, "the worker sets up its dependencies before running tasks"
        job = context.job
        started = time.perf_counter()
        status = "cancelled"
        try:
            await purge_org(deps, UUID(org_id))
            status = "succeeded"
        except PermanentError:
            status = "failed"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if retry.is_last_attempt(job.attempts):
                status = "failed"
                # What is left waits for the second pass (PURGE_AGAIN_AFTER) or an operator.
                log.error(
                    "gave up purging a deleted org",
                    org_id=org_id,
                    attempts=job.attempts + 1,
                    error=error,
                )
            else:
                status = "retried"
                log.warning(
                    "org purge attempt failed; will retry",
                    org_id=org_id,
                    attempt=job.attempts + 1,
                    error=error,
                )
            raise
        finally:
            JOBS.labels("purge_org", status).inc()
            JOB_DURATION.labels("purge_org").observe(time.perf_counter() - started)


# One sweeper at a time across all workers: two that list the same stalled job would both
# requeue it, the second after a live worker had already picked it up again.
SWEEP_LOCK = 0x5245_434F_5244  # "RECORD"


async def sweep(app: procrastinate.App, db: Database, settings: Settings) -> dict[str, int]:
    """Retry jobs whose worker died (no heartbeat) — or fail them once they have used their
    attempts, so a file that kills the worker every time ends ``failed`` instead of looping —
    fail recordings whose job ended without finishing them, and export the queue's age.
    Every worker runs it; an advisory lock lets one at a time do the work."""
    retried = gave_up = 0
    retry = pipeline_retry(settings)
    async with db.pool.connection() as conn, conn.transaction():
        # The worker's own role (``record_jobs``'s rights, no tenant): the sweep crosses orgs
        # only through the definer functions of migration 0007.
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS mine", (SWEEP_LOCK,))
        lock: Any = await cur.fetchone()
        # Without the lock, another worker is sweeping: nothing stalled is ours to touch.
        stalled = (
            await app.job_manager.get_stalled_jobs(
                seconds_since_heartbeat=settings.job_stalled_seconds
            )
            if lock["mine"]
            else []
        )
        for job in stalled:
            try:
                if retry.is_last_attempt(job.attempts):
                    await _give_up(app, conn, job)
                    gave_up += 1
                else:
                    log.warning("retrying stalled job", job_id=job.id, task=job.task_name)
                    wait = retry.wait_seconds(job.attempts)
                    await app.job_manager.retry_job(
                        job, retry_at=datetime.now(UTC) + timedelta(seconds=wait)
                    )
                    retried += 1
            except Exception:  # one job's trouble must not stop the sweep
                log.exception("could not sweep a stalled job", job_id=job.id)
    counts = await _fail_orphans_and_measure(db)
    return {"retried": retried, "gave_up": gave_up, **counts}


async def _give_up(app: procrastinate.App, conn: Any, job: Job) -> None:
    attempts = job.attempts + 1
    log.warning("stalled job out of attempts; failing it", job_id=job.id, attempts=attempts)
    assert job.id is not None
    await app.job_manager.finish_job(job, status=Status.FAILED, delete_job=False)
    await conn.execute(
        "SELECT app_fail_stalled_recording(%s, %s)",
        (
            job.id,
            f"The worker stopped without finishing this recording {attempts} times (it may "
            "run out of memory on it); upload it again, or shorten or re-encode it.",
        ),
    )


async def _fail_orphans_and_measure(db: Database) -> dict[str, int]:
    failed = 0
    async with db.pool.connection() as conn, conn.transaction():
        # Across orgs on purpose (maintenance, not a request): a definer function (0007).
        cur = await conn.execute("SELECT id FROM app_fail_orphaned_recordings() AS id")
        failed = len(await cur.fetchall())
        cur = await conn.execute(
            """
            SELECT coalesce(extract(epoch FROM now() - min(e.at)), 0) AS age
              FROM procrastinate_jobs AS j
              JOIN procrastinate_events AS e ON e.job_id = j.id AND e.type = 'deferred'
             WHERE j.status = 'todo' AND j.queue_name = %s
            """,
            (PIPELINE_QUEUE,),
        )
        row: Any = await cur.fetchone()
        JOB_QUEUE_AGE.labels(PIPELINE_QUEUE).set(float(row["age"]) if row else 0.0)
    if failed:
        log.warning("failed recordings whose job ended early", count=failed)
    return {"failed": failed}
