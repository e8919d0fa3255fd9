"""Job status, scoped through the recording it belongs to (the queue table has no org)."""

from __future__ import annotations

from uuid import UUID

from psycopg.rows import DictRow

from app.kit.db import Conn, fetch_one


async def get_job(conn: Conn, org_id: UUID, job_id: int) -> DictRow | None:
    return await fetch_one(
        conn,
        """
        SELECT j.id, j.task_name AS task, j.status::text AS status, j.attempts,
               r.id AS recording_id, r.status AS recording_status, r.error,
               (SELECT min(e.at) FROM procrastinate_events AS e
                 WHERE e.job_id = j.id AND e.type = 'deferred') AS created_at,
               (SELECT max(e.at) FROM procrastinate_events AS e
                 WHERE e.job_id = j.id AND e.type = 'started') AS started_at,
               (SELECT max(e.at) FROM procrastinate_events AS e
                 WHERE e.job_id = j.id AND e.type IN ('succeeded', 'failed', 'cancelled',
                                                      'aborted')) AS finished_at
          FROM recordings AS r
          JOIN procrastinate_jobs AS j ON j.id = r.job_id
         WHERE r.org_id = %s AND j.id = %s
        """,
        (org_id, job_id),
    )
