"""Creates the database's roles and the database before migrations run.

Runs from the application image (boto3 and psycopg, no Pulumi): reads the RDS-managed master
secret with its pod's IRSA role, then, idempotently, provisions (``app/kit/roles.py``) the owner
role the migrations run as, the API's, the worker's and KEDA's login roles (which own nothing),
with the passwords the stack derives from its Pulumi secret, and the database the owner owns,
with pgvector in it.

Two callers, both running code from main, never a pull request's:

- a base stack's migration Job, as its init container (``infra/migration.py``), for the base's
  own database;
- a preview's provisioner Job (``infra/provisioner.py``), which the preview's Pulumi program
  creates in the base's provisioning namespace, running the base's image under the base's
  ``record-db-provisioner`` ServiceAccount, for the preview's database on the shared instance.
  The preview's own pods never see the master secret: its migration Job only migrates.

The master is what RDS makes it: LOGIN, CREATEROLE, CREATEDB, a member of ``rds_superuser``,
not a superuser, and the owner of the first database (``tests/infra/test_db_bootstrap.py``
emulates exactly that). ``python -m infra.db_bootstrap``; settings come from the environment
the Job sets: ``AWS_REGION``, ``DB_MASTER_SECRET_ARN``, ``DB_HOST``, ``DB_PORT``, ``DB_NAME``,
``DB_OWNER_USER`` and the four ``DB_*_PASSWORD`` (``PGSSLMODE``/``PGSSLROOTCERT`` optional).

``python -m infra.db_bootstrap --drop``, with the same environment (the passwords unused), drops
a preview's database and roles instead (:func:`app.kit.roles.drop_preview`, which refuses any
other database): the Job ``infra/preview_db.py`` runs when a preview stack is destroyed.

Preview mode: both Jobs of a preview also set ``DB_PREVIEW_NUMBER=<n>``, and then either
action refuses, before reading the master secret, any database or owner but ``record_pr_<n>``
(:func:`app.kit.roles.require_preview`). The master may ``ALTER ROLE`` every role it created:
a preview Job that named ``record`` would otherwise reset the base stack's passwords.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

import psycopg

from app.kit.roles import Connect, LoginRoles, NotAPreview, drop_preview, provision, require_preview

# The Jobs' environment (infra/migration.py, infra/provisioner.py) names each of these.
ENV_DATABASE = "DB_NAME"
ENV_OWNER = "DB_OWNER_USER"
ENV_PASSWORDS = {
    "owner": "DB_OWNER_PASSWORD",
    "api": "DB_API_PASSWORD",
    "worker": "DB_WORKER_PASSWORD",
    "keda": "DB_KEDA_PASSWORD",
}


# Set by a preview's provisioner and drop Jobs (infra/provisioner.py): the pull request's number.
ENV_PREVIEW = "DB_PREVIEW_NUMBER"

# The flag the drop Job's command carries (infra/provisioner.py builds both Jobs).
DROP_FLAG = "--drop"


def master_connect(env: Mapping[str, str]) -> Connect:
    """Connections as the RDS master, whose credentials the Job's IRSA role reads."""
    import boto3

    secret = boto3.client("secretsmanager", region_name=env["AWS_REGION"]).get_secret_value(
        SecretId=env["DB_MASTER_SECRET_ARN"]
    )
    master = json.loads(secret["SecretString"])
    # RDS: TLS, and the server's certificate checked against the RDS CA bundle.
    sslmode = env.get("PGSSLMODE", "verify-full")
    sslrootcert = env.get("PGSSLROOTCERT", "system") if sslmode.startswith("verify") else None

    def connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=env["DB_HOST"],
            port=int(env.get("DB_PORT", "5432")),
            dbname=dbname,
            user=master["username"],
            password=master["password"],
            sslmode=sslmode,
            sslrootcert=sslrootcert,  # None: left out
            autocommit=True,
        )

    return connect


def main(env: Mapping[str, str] | None = None, argv: Sequence[str] = ()) -> int:
    env = os.environ if env is None else env
    if list(argv) not in ([], [DROP_FLAG]):
        print(f"usage: python -m infra.db_bootstrap [{DROP_FLAG}]", file=sys.stderr)
        return 2
    roles = LoginRoles(env[ENV_OWNER])
    database = env[ENV_DATABASE]
    if ENV_PREVIEW in env:
        try:
            require_preview(roles, database, env[ENV_PREVIEW])
        except NotAPreview as refused:
            print(f"db-bootstrap: {refused}", file=sys.stderr)
            return 3
    if list(argv) == [DROP_FLAG]:
        existed = drop_preview(master_connect(env), roles, database)
        state = "dropped" if existed else "already gone"
        print(f"db-bootstrap: database {database} {state}; roles {', '.join(roles.all)} gone")
        return 0
    passwords = {
        roles.owner: env[ENV_PASSWORDS["owner"]],
        roles.api: env[ENV_PASSWORDS["api"]],
        roles.worker: env[ENV_PASSWORDS["worker"]],
        roles.keda: env[ENV_PASSWORDS["keda"]],
    }
    provision(master_connect(env), roles, database, passwords=passwords)
    print(f"db-bootstrap: roles {', '.join(roles.all)} and database {database} ready", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(argv=sys.argv[1:]))
