"""Jobs: procrastinate's schema (the queue lives in the same PostgreSQL), and what the
application role may do with it: defer a job inside the request's transaction, read status.

The schema is procrastinate's own SQL, shipped with the pinned package; we don't write a second
queue. Upgrading procrastinate means a new migration with its migration files.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from importlib.resources import files

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BEGIN_VENDORED = "-- BEGIN vendored: procrastinate schema (third-party SQL, linted upstream)"
END_VENDORED = "-- END vendored: procrastinate schema"

GRANTS = """
GRANT SELECT, INSERT, UPDATE ON procrastinate_jobs, procrastinate_events,
    procrastinate_periodic_defers TO record_app;
GRANT USAGE, SELECT ON SEQUENCE procrastinate_jobs_id_seq, procrastinate_events_id_seq,
    procrastinate_periodic_defers_id_seq TO record_app;
GRANT EXECUTE ON FUNCTION procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])
    TO record_app;
"""

DOWNGRADE = """
DROP TABLE IF EXISTS procrastinate_periodic_defers, procrastinate_events, procrastinate_jobs,
    procrastinate_workers CASCADE;
DROP FUNCTION IF EXISTS procrastinate_defer_jobs_v1, procrastinate_defer_periodic_job_v2,
    procrastinate_fetch_job_v2, procrastinate_finish_job_v1, procrastinate_cancel_job_v1,
    procrastinate_retry_job_v1, procrastinate_retry_job_v2,
    procrastinate_notify_queue_job_inserted_v1,
    procrastinate_notify_queue_abort_job_v1, procrastinate_trigger_function_status_events_insert_v1,
    procrastinate_trigger_function_status_events_update_v1,
    procrastinate_trigger_function_scheduled_events_v1,
    procrastinate_trigger_abort_requested_events_procedure_v1,
    procrastinate_unlink_periodic_defers_v1, procrastinate_register_worker_v1,
    procrastinate_unregister_worker_v1, procrastinate_update_heartbeat_v1,
    procrastinate_prune_stalled_workers_v1 CASCADE;
DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
    procrastinate_job_status CASCADE;
"""


def procrastinate_schema() -> str:
    return files("procrastinate.sql").joinpath("schema.sql").read_text()


def upgrade() -> None:
    op.execute(f"{BEGIN_VENDORED}\n{procrastinate_schema()}\n{END_VENDORED}")
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(DOWNGRADE)
