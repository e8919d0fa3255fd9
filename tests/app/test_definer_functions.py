"""SECURITY DEFINER functions run with their owner's rights: a temporary object of the caller's
must never stand in for what they read (migrations 0003 and 0004; every such function's
search_path is checked in ``test_rls.py``)."""

from __future__ import annotations

import psycopg

from tests.app.conftest import Tenant
from tests.app.retrieval import Seeder


async def test_a_temporary_view_cannot_read_another_org_through_the_stats_function(
    settings, seeder: Seeder, org_a: Tenant, org_b: Tenant
):
    """As the application role of org A: a temporary view named pg_class that reads every
    org's chunks, then the definer function that reads pg_class. Org B's text must not come
    out (it did, before pg_temp was last in the function's search_path)."""
    await seeder.recording(org_a, "A", ["alpha one."])
    await seeder.recording(org_b, "B", ["The merger with Initech closes on May 3."])
    notices: list[str] = []
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET ROLE record_app")
        conn.execute("SELECT set_config('app.org_id', %s, false)", (org_a.org_id,))
        conn.execute(
            """
            CREATE FUNCTION pg_temp.steal() RETURNS double precision LANGUAGE plpgsql AS $$
            DECLARE t text;
            BEGIN
              SELECT string_agg(text, ' | ') INTO t FROM public.transcript_chunks;
              RAISE NOTICE 'read: %', t;
              RETURN 1;
            END $$"""
        )
        conn.execute(
            "CREATE TEMP VIEW pg_class AS SELECT "
            "'public.transcript_chunks'::regclass::oid AS oid, pg_temp.steal()::real AS reltuples"
        )
        conn.execute("SELECT * FROM app_chunk_stats()").fetchone()
        # The caller itself sees only its own org: the view ran with the caller's rights.
        conn.execute("SELECT * FROM pg_class").fetchone()
    assert notices, "the probe did not run at all"
    assert not any("Initech" in notice for notice in notices), notices
    assert any("alpha one." in notice for notice in notices)
