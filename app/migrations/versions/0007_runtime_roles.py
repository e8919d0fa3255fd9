"""Runtime roles: the worker's queue rights in ``record_jobs``, the API's narrowed to deferring a
job and reading its status, and the stalled-job sweep through two SECURITY DEFINER functions
instead of an owner's connection.

The API and the worker log in as roles that own nothing (``app/kit/roles.py``): a ``RESET ROLE``
in an injected query returns to a role row-level security still binds. What procrastinate's
worker does (``procrastinate/sql/queries.sql``): fetch, finish and retry jobs (functions that
select and update ``procrastinate_jobs``; its triggers add ``procrastinate_events`` rows),
register, beat and prune workers (``procrastinate_workers``), list stalled jobs and jobs to
abort. Not granted: deleting jobs (the worker keeps them, ``delete_jobs`` "never"), cancelling,
periodic jobs (we have none). PostgreSQL lets PUBLIC execute every new function, so
procrastinate's are revoked from PUBLIC first and granted by name.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';

DO $$
BEGIN
    -- Provisioned beforehand where the migrating role may not create roles (app/kit/roles.py).
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'record_jobs') THEN
        CREATE ROLE record_jobs NOLOGIN;
    END IF;
    IF NOT pg_has_role('record_jobs', 'record_app', 'MEMBER') THEN
        GRANT record_app TO record_jobs;
    END IF;
END
$$;

DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc AS p
         WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'procrastinate\\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$$;

-- The API: defer a job in the request's transaction (the function inserts the job; its
-- triggers add the event and notify the queue), read a job's status. No updates.
REVOKE UPDATE ON procrastinate_jobs, procrastinate_events FROM record_app;
REVOKE ALL ON procrastinate_periodic_defers FROM record_app;
REVOKE ALL ON SEQUENCE procrastinate_periodic_defers_id_seq FROM record_app;
REVOKE SELECT ON SEQUENCE procrastinate_jobs_id_seq, procrastinate_events_id_seq FROM record_app;
GRANT EXECUTE ON FUNCTION procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])
    TO record_app;

-- The worker: record_app's rights, and procrastinate's worker queries.
GRANT SELECT, UPDATE ON procrastinate_jobs TO record_jobs;
GRANT SELECT, INSERT, UPDATE, DELETE ON procrastinate_workers TO record_jobs;
GRANT EXECUTE ON FUNCTION
    procrastinate_fetch_job_v2(character varying[], bigint),
    procrastinate_finish_job_v1(bigint, procrastinate_job_status, boolean),
    procrastinate_retry_job_v2(
        bigint, timestamp with time zone, integer, character varying, character varying
    ),
    procrastinate_register_worker_v1(),
    procrastinate_unregister_worker_v1(bigint),
    procrastinate_update_heartbeat_v1(bigint),
    procrastinate_prune_stalled_workers_v1(double precision)
    TO record_jobs;

-- The stalled-job sweep crosses orgs on purpose (maintenance, not a request): these two
-- statements, and nothing else, run with the owner's rights.
CREATE FUNCTION app_fail_stalled_recording(p_job_id bigint, p_error text)
    RETURNS SETOF uuid
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    UPDATE recordings AS r
       SET status = 'failed', updated_at = now(), error = p_error
     WHERE r.job_id = p_job_id AND r.status IN ('uploaded', 'transcribing', 'embedding')
    RETURNING r.id
$$;

CREATE FUNCTION app_fail_orphaned_recordings()
    RETURNS SETOF uuid
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    UPDATE recordings AS r
       SET status = 'failed', updated_at = now(),
           error = coalesce(r.error, 'Processing stopped: its job ended as ' || j.status::text)
      FROM procrastinate_jobs AS j
     WHERE j.id = r.job_id
       AND r.status IN ('uploaded', 'transcribing', 'embedding')
       AND j.status IN ('failed', 'cancelled', 'aborted', 'succeeded')
    RETURNING r.id
$$;

REVOKE ALL ON FUNCTION app_fail_stalled_recording(bigint, text), app_fail_orphaned_recordings()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    app_fail_stalled_recording(bigint, text), app_fail_orphaned_recordings()
    TO record_jobs;
"""

DOWNGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
DROP FUNCTION IF EXISTS app_fail_orphaned_recordings();
DROP FUNCTION IF EXISTS app_fail_stalled_recording(bigint, text);
REVOKE ALL ON procrastinate_jobs, procrastinate_workers FROM record_jobs;
REVOKE EXECUTE ON FUNCTION
    procrastinate_fetch_job_v2(character varying[], bigint),
    procrastinate_finish_job_v1(bigint, procrastinate_job_status, boolean),
    procrastinate_retry_job_v2(
        bigint, timestamp with time zone, integer, character varying, character varying
    ),
    procrastinate_register_worker_v1(),
    procrastinate_unregister_worker_v1(bigint),
    procrastinate_update_heartbeat_v1(bigint),
    procrastinate_prune_stalled_workers_v1(double precision)
    FROM record_jobs;
GRANT SELECT, INSERT, UPDATE ON procrastinate_jobs, procrastinate_events,
    procrastinate_periodic_defers TO record_app;
GRANT USAGE, SELECT ON SEQUENCE procrastinate_jobs_id_seq, procrastinate_events_id_seq,
    procrastinate_periodic_defers_id_seq TO record_app;
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc AS p
         WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'procrastinate\\_%'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', fn);
    END LOOP;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # The role stays, like record_app: other databases on the server may use it.
    op.execute(DOWNGRADE)
