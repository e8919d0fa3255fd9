"""Row-level security: the application role sees only the org named in the transaction."""

from __future__ import annotations

import psycopg
import pytest

from tests.app.conftest import Tenant

TENANT_TABLES = [
    "orgs",
    "memberships",
    "invitations",
    "api_keys",
    "recordings",
    "transcripts",
    "transcript_segments",
    "transcript_chunks",
    "documents",
    "conversations",
    "messages",
    "shares",
    "audit_log",
    "users",
    "sessions",
]


def _seed_recording(url: str, org_id: str, user_id: str, title: str) -> None:
    with psycopg.connect(url) as conn:  # as the owner: bypasses RLS, like a migration would
        conn.execute(
            "INSERT INTO recordings (id, org_id, created_by, title) "
            "VALUES (gen_random_uuid(), %s, %s, %s)",
            (org_id, user_id, title),
        )


async def test_app_role_without_org_sees_nothing(client, settings, org_a: Tenant, org_b: Tenant):
    _seed_recording(settings.database_url, org_a.org_id, org_a.user_id, "a")
    _seed_recording(settings.database_url, org_b.org_id, org_b.user_id, "b")
    with psycopg.connect(settings.database_url) as conn:
        # The owner sees every row...
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] == 2
        conn.execute("SET ROLE record_app")
        # ...the application role, with no app.org_id set, sees none, in every tenant table.
        for table in TENANT_TABLES:
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert count == 0, table
        # Scoped to org A, it sees only org A's rows, even with no WHERE clause at all.
        conn.execute("SELECT set_config('app.org_id', %s, false)", (org_a.org_id,))
        titles = [r[0] for r in conn.execute("SELECT title FROM recordings")]
        assert titles == ["a"]
        members = {r[0] for r in conn.execute("SELECT org_id::text FROM memberships")}
        assert members == {org_a.org_id}


async def test_app_role_cannot_write_into_another_org(
    client, settings, org_a: Tenant, org_b: Tenant
):
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SET ROLE record_app")
        conn.execute("SELECT set_config('app.org_id', %s, false)", (org_a.org_id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO recordings (id, org_id, title) VALUES (gen_random_uuid(), %s, 'x')",
                (org_b.org_id,),
            )
        conn.rollback()
        conn.execute("SET ROLE record_app")
        conn.execute("SELECT set_config('app.org_id', %s, false)", (org_a.org_id,))
        updated = conn.execute(
            "UPDATE orgs SET name = 'pwned' WHERE id = %s", (org_b.org_id,)
        ).rowcount
        assert updated == 0


def test_app_role_owns_nothing_and_every_tenant_table_has_rls(template_url):
    with psycopg.connect(template_url) as conn:
        owned = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE r.rolname = 'record_app'"
        ).fetchone()[0]
        assert owned == 0
        rows = conn.execute(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY(%s)",
            (TENANT_TABLES,),
        ).fetchall()
        assert sorted(r[0] for r in rows) == sorted(TENANT_TABLES)
        assert all(r[1] for r in rows), rows
        # Every table that has an org_id column has RLS on.
        missing = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
            "WHERE a.attname = 'org_id' AND c.relkind = 'r' AND NOT c.relrowsecurity "
            "AND c.relnamespace = 'public'::regnamespace"
        ).fetchall()
        assert missing == []


def test_security_definer_functions_pin_search_path(template_url):
    with psycopg.connect(template_url) as conn:
        rows = conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE prosecdef "
            "AND pronamespace = 'public'::regnamespace"
        ).fetchall()
    assert len(rows) >= 5
    for name, config in rows:
        # pg_temp last: else the caller's temporary objects are searched first (migration 0004).
        assert config == ["search_path=pg_catalog, public, pg_temp"], name
