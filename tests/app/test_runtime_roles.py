"""The API and the worker log in as roles that own nothing: an injected ``RESET ROLE`` or
``SET ROLE`` gains them nothing, and they can change no schema (app/kit/roles.py, 0007)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from app.kit.roles import APP_ROLE, JOBS_ROLE
from tests.conftest import ROLES, as_role

RUNTIME = [ROLES.api, ROLES.worker]


def _seed(url: str) -> tuple[str, str]:
    """Two orgs with one recording each, written as the superuser."""
    org_a, org_b = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        for org, title in ((org_a, "a"), (org_b, "b")):
            conn.execute("INSERT INTO orgs (id, name) VALUES (%s, %s)", (org, title))
            conn.execute(
                "INSERT INTO recordings (id, org_id, title) VALUES (gen_random_uuid(), %s, %s)",
                (org, title),
            )
    return org_a, org_b


@pytest.mark.parametrize("role", RUNTIME)
def test_reset_role_still_binds_row_level_security(database_url: str, role: str) -> None:
    org_a, _ = _seed(database_url)
    with psycopg.connect(as_role(database_url, role), autocommit=True) as conn:
        conn.execute(f"SET ROLE {APP_ROLE}")
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        assert conn.execute("SELECT count(*) FROM recordings").fetchone() == (0,)
        conn.execute("SELECT set_config('app.org_id', %s, false)", (org_a,))
        assert conn.execute("SELECT title FROM recordings").fetchall() == [("a",)]
        # Session authorization is the login role too: nothing to reset to but itself.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET SESSION AUTHORIZATION postgres")


@pytest.mark.parametrize("role", RUNTIME)
@pytest.mark.parametrize(
    "statement",
    [
        "CREATE ROLE intruder LOGIN",
        "ALTER TABLE recordings DISABLE ROW LEVEL SECURITY",
        "DROP POLICY recordings_tenant ON recordings",
        "DROP TABLE recordings",
        "ALTER FUNCTION app_fail_orphaned_recordings() SECURITY INVOKER",
        "CREATE TABLE public.stash (x int)",
        "CREATE DATABASE stash",
        f"SET ROLE {ROLES.owner}",
        "SET ROLE postgres",
        f"GRANT {JOBS_ROLE} TO {ROLES.api}",
    ],
)
def test_a_runtime_role_cannot_change_the_schema_or_become_another_role(
    database_url: str, role: str, statement: str
) -> None:
    with psycopg.connect(as_role(database_url, role), autocommit=True) as conn:
        conn.execute("RESET ROLE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_the_roles_have_no_privileged_attributes_and_the_runtime_roles_own_nothing(
    database_url: str,
) -> None:
    with psycopg.connect(database_url) as conn:
        for role in ROLES.all:
            attributes = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication "
                "FROM pg_roles WHERE rolname = %s",
                (role,),
            ).fetchone()
            assert attributes == (False,) * 5, role
        for role in RUNTIME:
            owned = conn.execute(
                """
                SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
                     + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
                     + (SELECT count(*) FROM pg_type WHERE typowner = r.oid)
                     + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
                     + (SELECT count(*) FROM pg_database WHERE datdba = r.oid)
                  FROM pg_roles AS r WHERE r.rolname = %s
                """,
                (role,),
            ).fetchone()
            assert owned == (0,), role
        # What each may act as: itself and its group roles, nothing else.
        acts_as = {
            role: {
                r[0]
                for r in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE pg_has_role(%s, oid, 'SET')", (role,)
                )
            }
            for role in RUNTIME
        }
    assert acts_as == {
        ROLES.api: {ROLES.api, APP_ROLE},
        ROLES.worker: {ROLES.worker, JOBS_ROLE, APP_ROLE},
    }


def test_the_api_defers_and_reads_jobs_but_cannot_work_the_queue(database_url: str) -> None:
    with psycopg.connect(as_role(database_url, ROLES.api), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)
        for statement in (
            "SELECT procrastinate_fetch_job_v2(NULL, NULL)",
            "SELECT procrastinate_register_worker_v1()",
            "UPDATE procrastinate_jobs SET status = 'failed'",
            "DELETE FROM procrastinate_jobs",
            "SELECT * FROM procrastinate_workers",
            "SELECT * FROM app_fail_orphaned_recordings()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(as_role(database_url, ROLES.worker), autocommit=True) as conn:
        registered = conn.execute("SELECT * FROM procrastinate_register_worker_v1()").fetchone()
        assert registered is not None
        (worker_id,) = registered
        conn.execute("SELECT procrastinate_fetch_job_v2(NULL, %s)", (worker_id,))
        conn.execute("SELECT procrastinate_unregister_worker_v1(%s)", (worker_id,))
        for statement in ("DELETE FROM procrastinate_jobs", "TRUNCATE procrastinate_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_record_up_hands_an_older_superuser_schema_to_the_owner(pg_server: Any) -> None:
    """Before the owner role, `record up` migrated as the superuser: its next start gives the
    owner every object, and the owner can then migrate (down a step and up again)."""
    from app.kit.migrate import downgrade, upgrade

    pg_server.create_database("legacy_stack")
    upgrade(pg_server.url("legacy_stack"))  # as the superuser, as before
    pg_server.provision(ROLES, "legacy_stack")
    pg_server.provision(ROLES, "legacy_stack")  # every start runs it
    with psycopg.connect(pg_server.url("legacy_stack")) as conn:
        owners = conn.execute(
            """
            SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class AS c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S', 'i')
            UNION
            SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc AS p
             WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'app\\_%'
            """
        ).fetchall()
    assert owners == [(ROLES.owner,)]
    owner = as_role(pg_server.url("legacy_stack"), ROLES.owner)
    downgrade(owner, "0006")
    upgrade(owner)
    with psycopg.connect(as_role(pg_server.url("legacy_stack"), ROLES.api)) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone() == (0,)
