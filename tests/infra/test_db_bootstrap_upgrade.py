"""The bootstrap on a database set up before the role split: ``record_app`` was created by the
application's own login (migration 0001 with CREATEROLE), so on PostgreSQL 16 that login, now
the owner role, holds ADMIN OPTION on it and the master does not. The bootstrap must still give
the new groups their membership ("no possible grantors" before), and run twice."""

from __future__ import annotations

import psycopg

from app.devstack.servers import PostgresServer
from app.kit.roles import APP_ROLE, JOBS_ROLE
from infra.db_bootstrap import main
from tests.infra.test_db_bootstrap import (  # noqa: F401
    MASTER,
    job_env,
    master_secret,
    rds_like,
)


def test_bootstrap_adopts_a_record_app_made_by_the_old_login(
    rds_like: PostgresServer,  # noqa: F811 - a server of this module's own
    master_secret: str,  # noqa: F811
) -> None:
    with psycopg.connect(rds_like.url("postgres"), autocommit=True) as conn:
        # Made by hand as the master (the old Job's bootstrap could not run on RDS), then the
        # old migration 0001, run as that login, created record_app.
        conn.execute(f"SET ROLE {MASTER}")
        conn.execute("CREATE ROLE record LOGIN CREATEROLE PASSWORD 'old-app-password'")
        conn.execute("SET ROLE record")
        conn.execute(f"CREATE ROLE {APP_ROLE} NOLOGIN")
        conn.execute("RESET ROLE")
    env = job_env(rds_like, master_secret, "record", "record")
    assert main(env) == 0
    assert main(env) == 0
    with psycopg.connect(rds_like.url("postgres")) as conn:
        member = conn.execute(
            "SELECT pg_has_role(%s, %s, 'MEMBER')", (JOBS_ROLE, APP_ROLE)
        ).fetchone()
    assert member == (True,)
