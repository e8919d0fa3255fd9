"""Creates the application's login role and database before migrations run.

Runs as the migration Job's init container, from the application image (boto3 and psycopg,
no Pulumi): reads the RDS-managed master secret with the Job's IRSA role, then, idempotently,
creates or updates the login role with the password the stack holds as a Pulumi secret and the
database it owns. A preview stack uses the same step to get its own database on the shared
base instance. ``python -m infra.db_bootstrap``; settings come from the environment the Job sets.
"""

from __future__ import annotations

import json
import os
import sys

_IDENT_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _ident(name: str) -> str:
    if not name or not set(name) <= _IDENT_CHARS or name[0].isdigit():
        raise ValueError(f"refusing identifier {name!r}: lower-case letters, digits, _ only")
    return f'"{name}"'


def statements(app_user: str, database: str, exists: bool) -> list[tuple[str, tuple[str, ...]]]:
    """The SQL to run on the maintenance database, in order, with its parameters."""
    role = _ident(app_user)
    out: list[tuple[str, tuple[str, ...]]] = [
        (
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN "
            f"CREATE ROLE {role} LOGIN; END IF; END $$",
            (app_user,),
        ),
        # The migrations create record_app (no login, owns nothing) and grant it to this role;
        # PostgreSQL 16 lets a CREATEROLE role do that for the roles it creates. No superuser.
        (f"ALTER ROLE {role} CREATEROLE NOSUPERUSER", ()),
    ]
    if not exists:
        out.append((f"CREATE DATABASE {_ident(database)} OWNER {role}", ()))
    return out


# Extensions that need rds_superuser to create: the master creates them, in the app's database,
# so the migrations' CREATE EXTENSION IF NOT EXISTS finds them there.
EXTENSIONS = ("vector", "pg_stat_statements")


def main() -> int:  # pragma: no cover - needs AWS and a database; exercised by the Job
    import boto3
    import psycopg
    from psycopg import sql

    env = os.environ
    secret = boto3.client("secretsmanager", region_name=env["AWS_REGION"]).get_secret_value(
        SecretId=env["DB_MASTER_SECRET_ARN"]
    )
    master = json.loads(secret["SecretString"])
    app_user, database = env["DB_APP_USER"], env["DB_NAME"]
    with psycopg.connect(
        host=env["DB_HOST"],
        port=int(env.get("DB_PORT", "5432")),
        dbname="postgres",
        user=master["username"],
        password=master["password"],
        sslmode="verify-full",
        sslrootcert=env.get("PGSSLROOTCERT", "system"),
        autocommit=True,
    ) as conn:
        exists = (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            is not None
        )
        for statement, params in statements(app_user, database, exists):
            conn.execute(statement.encode(), params or None)
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(app_user), sql.Literal(env["DB_APP_PASSWORD"])
            )
        )
    with psycopg.connect(
        host=env["DB_HOST"],
        port=int(env.get("DB_PORT", "5432")),
        dbname=database,
        user=master["username"],
        password=master["password"],
        sslmode="verify-full",
        sslrootcert=env.get("PGSSLROOTCERT", "system"),
        autocommit=True,
    ) as conn:
        for extension in EXTENSIONS:
            conn.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension))
            )
    print(f"db-bootstrap: role {app_user} and database {database} ready")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
