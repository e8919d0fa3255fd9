"""The queue's depth for KEDA: one view, ``app_queue_depth``, readable by ``record_queue_reader``.

KEDA's operator scales the worker on how many jobs wait or run. It logs in as ``<owner>_keda``
(``app/kit/roles.py``) from outside Record's pods, without the RDS CA bundle, so it gets one
number and nothing else: not ``procrastinate_jobs`` itself, whose ``args`` name orgs and
recordings. The view runs with its owner's rights (a view is not ``security_invoker`` unless
asked), which is how the reader counts rows it may not select. The ScaledObject's query
(``infra/worker.py``) reads it; ``tests/infra/test_autoscaling.py`` runs that query as
that role.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';

DO $$
BEGIN
    -- Provisioned beforehand where the migrating role may not create roles (app/kit/roles.py).
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'record_queue_reader') THEN
        CREATE ROLE record_queue_reader NOLOGIN;
    END IF;
END
$$;

-- Jobs waiting or being worked: the number the worker's replica count follows.
CREATE VIEW app_queue_depth AS
    SELECT count(*) AS jobs
      FROM procrastinate_jobs
     WHERE status IN ('todo', 'doing');

REVOKE ALL ON app_queue_depth FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO record_queue_reader;
GRANT SELECT ON app_queue_depth TO record_queue_reader;
"""

DOWNGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
DROP VIEW IF EXISTS app_queue_depth;
REVOKE USAGE ON SCHEMA public FROM record_queue_reader;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # The role stays, like record_jobs: other databases on the server may use it.
    op.execute(DOWNGRADE)
