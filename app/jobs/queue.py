"""Deferring jobs in the caller's transaction.

procrastinate's own ``defer_async`` uses its own connection, so a recording row and its job
could commit apart. Calling its SQL function on *our* connection makes them one transaction:
both exist, or neither.
"""

from __future__ import annotations

import json
from uuid import UUID

from psycopg import errors

from app.kit.db import Conn, fetch_one
from app.kit.errors import ConflictError

PIPELINE_QUEUE = "pipeline"
PIPELINE_TASK = "record.process_recording"


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
