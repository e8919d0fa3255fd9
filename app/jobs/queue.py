"""Deferring jobs in the caller's transaction.

procrastinate's own ``defer_async`` uses its own connection, so a recording row and its job
could commit apart. Calling its SQL function on *our* connection makes them one transaction:
both exist, or neither.
"""

from __future__ import annotations

import json
from datetime import timedelta
from enum import StrEnum
from uuid import UUID

from psycopg import errors

from app.kit.db import Conn, fetch_all, fetch_one
from app.kit.errors import ConflictError

PIPELINE_QUEUE = "pipeline"
PIPELINE_TASK = "record.process_recording"
MAINTENANCE_QUEUE = "maintenance"
PURGE_ORG_TASK = "record.purge_org"

# The purge runs again this long after the deletion, for what was on its way when the org went:
# a direct upload's signed PUT (valid 15 minutes) landing in staging, or a pipeline job still
# transcribing (up to TRANSCRIPTION_TIMEOUT_SECONDS, 30 minutes by default) writing its caches.
PURGE_AGAIN_AFTER = timedelta(hours=2)


async def defer_pipeline(conn: Conn, *, org_id: UUID, recording_id: UUID) -> int:
    """Queue the pipeline for one recording. One queued pipeline per recording at a time
    (procrastinate's queueing lock), and one running at a time (its lock)."""
    args = json.dumps({"org_id": str(org_id), "recording_id": str(recording_id)})
    try:
        async with conn.transaction():  # a savepoint: a refused defer leaves the caller's tx usable
            row = await fetch_one(
                conn,
                """
                SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
                    ROW(%s, %s, 0, %s, %s, %s::jsonb, NULL)::procrastinate_job_to_defer_v1
                ])) AS id
                """,
                (
                    PIPELINE_QUEUE,
                    PIPELINE_TASK,
                    f"recording:{recording_id}",
                    f"recording:{recording_id}",
                    args,
                ),
            )
    except errors.UniqueViolation as exc:
        raise ConflictError("This recording is already queued for processing.") from exc
    assert row is not None
    return int(row["id"])


async def defer_org_purge(conn: Conn, *, org_id: UUID) -> list[int]:
    """Queue the deletion of what a deleted org leaves outside PostgreSQL (its objects, its
    cached values): now, and once more after ``PURGE_AGAIN_AFTER``. Called in the transaction
    that deletes the org, so the jobs exist if and only if the deletion commits. Their
    arguments hold the org's id alone: its rows are gone when they run."""
    args = json.dumps({"org_id": str(org_id)})
    # No procrastinate lock: a locked job waits behind every earlier one of its lock, and two
    # idempotent passes two hours apart need no exclusion.
    rows = await fetch_all(
        conn,
        """
        SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
            ROW(%(queue)s, %(task)s, 0, NULL, NULL, %(args)s::jsonb, NULL)
                ::procrastinate_job_to_defer_v1,
            ROW(%(queue)s, %(task)s, 0, NULL, NULL, %(args)s::jsonb, now() + %(later)s)
                ::procrastinate_job_to_defer_v1
        ])) AS id
        """,
        {
            "queue": MAINTENANCE_QUEUE,
            "task": PURGE_ORG_TASK,
            "args": args,
            "later": PURGE_AGAIN_AFTER,
        },
    )
    return [int(row["id"]) for row in rows]


MAIL_QUEUE = "mail"
MAIL_TASK = "record.send_mail"


class MailKind(StrEnum):
    verify_email = "verify_email"
    password_reset = "password_reset"
    invitation = "invitation"
    password_changed = "password_changed"


async def defer_mail(conn: Conn, kind: MailKind, *, lock: str, **args: str) -> None:
    """Queue one mail, sent by the worker (and retried there), in the caller's transaction.

    ``lock`` is procrastinate's queueing lock: while one such mail waits in the queue, asking
    again adds nothing (a burst of resend or reset requests sends one message).
    """
    payload = json.dumps({"kind": kind.value, **args})
    try:
        async with conn.transaction():
            await fetch_one(
                conn,
                """
                SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
                    ROW(%s, %s, 0, NULL, %s, %s::jsonb, NULL)::procrastinate_job_to_defer_v1
                ])) AS id
                """,
                (MAIL_QUEUE, MAIL_TASK, f"mail:{lock}", payload),
            )
    except errors.UniqueViolation:
        pass  # the same mail is already queued
