"""Search: what the vector search needs to pick its plan, without seeing other tenants.

The plan (``app/search/repository.py``) depends on the size of the table and on the share of it
the caller's org holds. ``pg_stats`` knows the share of every large org (its most common
values), but PostgreSQL hides the statistics of a table with row-level security from a role the
policies bind, because they contain values. This SECURITY DEFINER function returns the table's
row estimate and the caller's own org's share (``app.org_id``, never a parameter), or NULL when
the org is not among the most common values, i.e. small. ``pg_temp`` is last in its
search_path and the catalogs are named in full: a temporary object of the caller's cannot stand
in for them (migration 0004 says why).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
CREATE FUNCTION app_chunk_stats()
    RETURNS TABLE (table_rows double precision, org_share double precision)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    SELECT greatest(c.reltuples, 0)::double precision,
           (SELECT f.freq::double precision
              FROM pg_catalog.pg_stats AS s,
                   unnest(s.most_common_vals::text::uuid[], s.most_common_freqs) AS f (org, freq)
             WHERE s.schemaname = 'public' AND s.tablename = 'transcript_chunks'
               AND s.attname = 'org_id' AND f.org = public.app_current_org())
      FROM pg_catalog.pg_class AS c
     WHERE c.oid = 'public.transcript_chunks'::regclass
$$;
REVOKE ALL ON FUNCTION app_chunk_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_chunk_stats() TO record_app;
"""

DOWNGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
DROP FUNCTION IF EXISTS app_chunk_stats();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
