"""The database bootstrap against a real PostgreSQL 18 set up the way RDS sets one up: a base
stack's, as its migration Job's init container runs it, and a preview's, as the base's
provisioner Job runs it (``infra/provisioner.py``), with the environment read from that Job's
rendered manifest.

What is emulated, and how: RDS's master user is ``LOGIN CREATEROLE CREATEDB``, not a superuser,
and owns the database RDS created (``record``); its password lives in Secrets Manager (moto
here). RDS lets the master create pgvector through ``rds_superuser``; a non-superuser cannot do
that on a plain server, so the server's superuser creates the extension in ``template1`` first
and every database inherits it (the bootstrap's CREATE EXTENSION IF NOT EXISTS then finds it).
Everything else runs as the master, with passwords checked (scram-sha-256 on the socket).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.devstack.servers import PostgresServer, hand_to_service_user, service_user_kwargs
from app.kit.roles import APP_ROLE, JOBS_ROLE, LoginRoles, NotAPreview, drop_preview
from infra.db_bootstrap import ENV_DATABASE, ENV_OWNER, ENV_PASSWORDS, ENV_PREVIEW, main
from infra.plan import PLACEHOLDER, Plan
from infra.provisioner import JOB_PREFIX
from infra.rollout_gate import GATE_NAME
from infra.worker import QUEUE_DEPTH_QUERY
from tests.infra.conftest import of_kind, one

MASTER = "record_admin"
MASTER_PASSWORD = "master-secret-0"


@pytest.fixture(scope="module")
def rds_like() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="record-test-rds-"))
    server = PostgresServer(data_dir=base / "data", socket_dir=base / "run")
    server.initdb()
    # The superuser (the emulation's hand, like RDS's own admin) by trust; everyone else by
    # password, as on RDS.
    (server.data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\nlocal all all scram-sha-256\n"
    )
    hand_to_service_user(server.data_dir)
    log = open(base / "postgres.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        server.command(extra={"fsync": "off"}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **service_user_kwargs(),
    )
    try:
        deadline = time.monotonic() + 20
        while not server.is_ready():
            assert proc.poll() is None, "PostgreSQL exited"
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.05)
        with psycopg.connect(server.url("template1"), autocommit=True) as conn:
            # What RDS lets rds_superuser create, made here by the emulation's superuser.
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
            ).fetchone():
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE ROLE rds_superuser NOLOGIN")
            # RDS lets rds_superuser end any session (pg_terminate_backend): what dropping a
            # preview's database with its connections open needs.
            conn.execute("GRANT pg_signal_backend TO rds_superuser")
            conn.execute(
                f"CREATE ROLE {MASTER} LOGIN CREATEROLE CREATEDB PASSWORD '{MASTER_PASSWORD}' "
                "IN ROLE rds_superuser"
            )
            conn.execute(f"CREATE DATABASE record OWNER {MASTER}")
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def master_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(
            Name="rds!db-record",
            SecretString=json.dumps({"username": MASTER, "password": MASTER_PASSWORD}),
        )["ARN"]
        yield str(arn)


def migration_env(plan: Plan, server: PostgresServer, secret_arn: str) -> dict[str, str]:
    """What the base's rendered migration Job gives its bootstrap init container: its env as
    rendered but for what only a deployment knows (the RDS address, the secret's ARN, TLS: a
    local socket here), the region from its ConfigMap, and the passwords from its Secret, each
    filled with ``<owner>-<kind>-pw``. Drift between the Job and what db_bootstrap reads fails
    here, not in a cluster."""
    job = one(m for m in of_kind(plan, "Job") if m["metadata"]["name"].startswith("record-migrate"))
    init = one(job["spec"]["template"]["spec"]["initContainers"])
    assert init["command"] == ["python", "-m", "infra.db_bootstrap"]
    env = {e["name"]: str(e["value"]) for e in init["env"]}
    env.update(DB_HOST=str(server.socket_dir), DB_MASTER_SECRET_ARN=secret_arn)
    env["PGSSLMODE"] = "disable"
    kinds = {variable: kind for kind, variable in ENV_PASSWORDS.items()}
    found: set[str] = set()
    for source in init["envFrom"]:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            config = one(m for m in of_kind(plan, "ConfigMap") if m["metadata"]["name"] == name)
            env.setdefault("AWS_REGION", config["data"].get("AWS_REGION", "eu-west-1"))
            continue
        name = source["secretRef"]["name"]
        secret = one(m for m in of_kind(plan, "Secret") if m["metadata"]["name"] == name)
        for key in secret["stringData"]:
            if key in kinds:
                env[key] = f"{env[ENV_OWNER]}-{kinds[key]}-pw"
                found.add(key)
    assert found == set(kinds), "the migration Job must hand the bootstrap every password"
    return env


def job_env(server: PostgresServer, secret_arn: str, owner: str, database: str) -> dict[str, str]:
    """The bootstrap's environment for any owner and database (the tests of odd cases); the
    rendered Jobs' own are ``migration_env`` and ``provisioner_env``."""
    return {
        "AWS_REGION": "eu-west-1",
        "DB_MASTER_SECRET_ARN": secret_arn,
        "DB_HOST": str(server.socket_dir),
        "DB_PORT": "5432",
        "DB_NAME": database,
        "PGSSLMODE": "disable",
        ENV_OWNER: owner,
        **{variable: f"{owner}-{kind}-pw" for kind, variable in ENV_PASSWORDS.items()},
    }


def provisioner_env(plan: Plan, server: PostgresServer, secret_arn: str) -> dict[str, str]:
    """What the preview's rendered provisioner Job gives its container: its env as rendered but
    for what only a deployment knows (the RDS address, the secret's ARN, TLS: a local socket
    here), and its Secret's keys, each filled with ``<owner>-<kind>-pw``."""
    job = one(m for m in of_kind(plan, "Job") if m["metadata"]["name"].startswith(JOB_PREFIX))
    container = one(job["spec"]["template"]["spec"]["containers"])
    env = {e["name"]: str(e["value"]) for e in container["env"]}
    assert env["DB_HOST"] == f"{PLACEHOLDER}-base-dbAddress"
    assert env["DB_MASTER_SECRET_ARN"] == f"{PLACEHOLDER}-base-dbMasterSecretArn"
    env.update(DB_HOST=str(server.socket_dir), DB_MASTER_SECRET_ARN=secret_arn)
    env["PGSSLMODE"] = "disable"
    kinds = {variable: kind for kind, variable in ENV_PASSWORDS.items()}
    for source in container["envFrom"]:
        name = source["secretRef"]["name"]
        # envFrom reads a Secret of the pod's own namespace: the provisioning namespace.
        secret = one(
            m
            for m in of_kind(plan, "Secret")
            if m["metadata"]["name"] == name
            and m["metadata"]["namespace"] == job["metadata"]["namespace"]
        )
        for key in secret["stringData"]:
            env[key] = f"{env[ENV_OWNER]}-{kinds[key]}-pw"
    return env


def login(server: PostgresServer, role: str, owner: str, database: str) -> str:
    kind = "owner" if role == owner else role.removeprefix(f"{owner}_")
    return f"postgresql://{role}:{owner}-{kind}-pw@/{database}?host={server.socket_dir}"


STACKS = [("record", "record"), ("record_pr_7", "record_pr_7")]


@pytest.mark.parametrize("stack", ["base", "preview"])
async def test_bootstrap_then_migrations_then_the_app(
    rds_like: PostgresServer,
    master_secret: str,
    redis_url: str,
    plans: dict[str, Plan],
    stack: str,
) -> None:
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport, AsyncClient

    from app.kit.migrate import upgrade
    from app.main import create_app
    from app.settings import Settings

    if stack == "base":
        env = migration_env(plans["staging"], rds_like, master_secret)
    else:
        env = provisioner_env(plans["preview"], rds_like, master_secret)
    owner, database = env[ENV_OWNER], env[ENV_DATABASE]
    assert (owner, database) == (("record",) * 2 if stack == "base" else ("record_pr_0",) * 2)
    assert main(env) == 0
    assert main(env) == 0  # a Job retried, or the next deploy: nothing changes, nothing fails
    roles = LoginRoles(owner)

    # alembic upgrade head as the owner: all a preview's own migration Job does.
    upgrade(login(rds_like, owner, owner, database))
    upgrade(login(rds_like, owner, owner, database))

    with psycopg.connect(rds_like.url("postgres")) as conn:
        assert conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone() == (owner,)
        for role in roles.all:
            assert conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                "WHERE rolname = %s",
                (role,),
            ).fetchone() == (False, False, False, False), role
    with psycopg.connect(rds_like.url(database)) as conn:
        tables = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class AS c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S', 'v') "
            # An extension's own views (pg_stat_statements) belong to whoever created it.
            "AND NOT EXISTS (SELECT FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass "
            "AND d.objid = c.oid AND d.deptype = 'e')"
        ).fetchall()
        assert tables == [(owner,)]

    settings = Settings(
        environment="test",
        database_url=login(rds_like, roles.api, owner, database),
        redis_url=redis_url,
        database_pool_min=1,
        database_pool_max=2,
        log_level="WARNING",
    )
    application = create_app(settings)
    async with LifespanManager(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/readyz")
    assert response.status_code == 200, response.text

    with psycopg.connect(login(rds_like, roles.worker, owner, database)) as conn:
        row = conn.execute("SELECT * FROM procrastinate_register_worker_v1()").fetchone()
        assert row is not None
        # The chunk writes stage rows in a temporary table, as record_app.
        conn.execute("SET ROLE record_app")
        conn.execute("CREATE TEMPORARY TABLE chunk_stage_probe (id uuid)")
        conn.execute("RESET ROLE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("RESET ROLE; CREATE ROLE intruder")
    # KEDA's login, by its password, reads the queue's depth.
    with psycopg.connect(login(rds_like, roles.keda, owner, database)) as conn:
        assert conn.execute(QUEUE_DEPTH_QUERY).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TEMPORARY TABLE scratch (x int)")


def test_a_preview_cannot_reach_the_base_database(
    rds_like: PostgresServer, master_secret: str
) -> None:
    for owner, database in STACKS:
        main(job_env(rds_like, master_secret, owner, database))
    preview = LoginRoles("record_pr_7")
    for role in preview.all:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(login(rds_like, role, preview.owner, "record")).close()


def test_the_master_keeps_no_owner_rights_by_default(
    rds_like: PostgresServer, master_secret: str
) -> None:
    main(job_env(rds_like, master_secret, "record", "record"))
    master: Any = f"postgresql://{MASTER}:{MASTER_PASSWORD}@/postgres?host={rds_like.socket_dir}"
    with psycopg.connect(master) as conn:
        # It may SET ROLE to the owner (PostgreSQL 16 needs that to give it a database), but
        # does not inherit its rights.
        assert conn.execute("SELECT pg_has_role('record', 'SET')").fetchone() == (True,)
        assert conn.execute("SELECT pg_has_role('record', 'USAGE')").fetchone() == (False,)
        for group in (APP_ROLE, JOBS_ROLE):
            assert conn.execute("SELECT pg_has_role(%s, 'USAGE')", (group,)).fetchone() == (False,)


def test_odd_names_are_refused() -> None:
    with pytest.raises(ValueError, match="refusing identifier"):
        LoginRoles('record"; DROP')


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "preview"])
def test_each_workload_gets_its_own_database_login(plans: dict[str, Any], stack: str) -> None:
    """The API's and the worker's DATABASE_URL log in as roles that own nothing; only the
    migration Job's logs in as the owner, and only a base stack's Job, which bootstraps, sees the
    passwords it sets (a preview's provisioner runs in the base's provisioning namespace)."""
    plan = plans[stack]
    secrets = {m["metadata"]["name"]: m for m in plan.manifests if m["kind"] == "Secret"}
    assert "DATABASE_URL" not in secrets["record-secrets"]["stringData"]
    assert not any(key.startswith("DB_") for key in secrets["record-secrets"]["stringData"])
    assert set(secrets["record-db-api"]["stringData"]) == {"DATABASE_URL"}
    assert set(secrets["record-db-worker"]["stringData"]) == {"DATABASE_URL"}
    bootstraps = stack != "preview"
    assert set(secrets["record-db-migrate"]["stringData"]) == {
        "DATABASE_URL",
        *(ENV_PASSWORDS.values() if bootstraps else ()),
    }
    expected = {
        "record-api": {"record-db-api"},
        "record-worker": {"record-db-worker"},
        "record-model-server": set(),
    }
    for manifest in plan.manifests:
        if manifest["kind"] not in {"Deployment", "Rollout", "Job"}:
            continue
        name = manifest["metadata"]["name"]
        if name.startswith(JOB_PREFIX):
            continue  # the base's provisioner (tests/infra/test_preview_provisioner.py)
        pod = manifest["spec"]["template"]["spec"]
        if name.startswith(f"{GATE_NAME}-"):
            # The rollout gate reads the Kubernetes API only: no settings, no database.
            assert all("envFrom" not in c for c in pod["containers"]), name
            continue
        for container in pod["containers"] + pod.get("initContainers", []):
            loaded = {
                source["secretRef"]["name"]
                for source in container["envFrom"]
                if "secretRef" in source and source["secretRef"]["name"].startswith("record-db-")
            }
            want = {"record-db-migrate"} if manifest["kind"] == "Job" else expected[name]
            assert loaded == want, (name, container["name"])
        if manifest["kind"] == "Job" and bootstraps:
            env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
            assert env[ENV_OWNER] == "record"
        elif manifest["kind"] == "Job":
            assert "initContainers" not in pod
    # KEDA's operator logs in as its own role, with the password alone (tests/infra/
    # test_autoscaling.py).
    (keda,) = [m for m in plan.manifests if m["kind"] == "TriggerAuthentication"]
    assert keda["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "record-db-keda", "key": "password"}
    ]
    assert set(secrets["record-db-keda"]["stringData"]) == {"password"}


def master_connect(server: PostgresServer) -> Any:
    def connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            f"postgresql://{MASTER}:{MASTER_PASSWORD}@/{dbname}?host={server.socket_dir}",
            autocommit=True,
        )

    return connect


def databases_and_roles(server: PostgresServer, names: tuple[str, ...]) -> set[str]:
    with psycopg.connect(server.url("postgres")) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s) "
            "UNION ALL SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
            (list(names), list(names)),
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_a_preview_is_dropped_as_its_destroy_drops_it(
    rds_like: PostgresServer, master_secret: str, plans: dict[str, Plan]
) -> None:
    """The drop Job's run (``python -m infra.db_bootstrap --drop``, the provisioner's
    environment: tests/infra/test_preview_db.py shows the two Jobs' are the same), as the
    RDS-like master: the database with its open sessions, then the roles; again, nothing."""
    from app.kit.migrate import upgrade

    base = job_env(rds_like, master_secret, "record", "record")
    env = provisioner_env(plans["preview"], rds_like, master_secret)
    assert main(base) == 0
    assert main(env) == 0
    roles = LoginRoles("record_pr_0")
    upgrade(login(rds_like, roles.owner, roles.owner, "record_pr_0"))
    # A preview's API still connected (a pod slow to stop), in a transaction.
    api = psycopg.connect(login(rds_like, roles.api, roles.owner, "record_pr_0"))
    api.execute("SELECT 1")
    names = ("record_pr_0", *roles.all)
    assert databases_and_roles(rds_like, names) == set(names)

    assert main(env, ["--drop"]) == 0
    assert databases_and_roles(rds_like, names) == set()
    with pytest.raises(psycopg.OperationalError):
        api.execute("SELECT 1")
    api.close()
    # A destroy run again (the first failed later on): nothing to do, nothing fails.
    assert main(env, ["--drop"]) == 0
    assert drop_preview(master_connect(rds_like), roles, "record_pr_0") is False

    # The base's database and roles are untouched, and cannot be dropped this way.
    base_names = ("record", *LoginRoles("record").all)
    assert databases_and_roles(rds_like, base_names) == set(base_names)
    with pytest.raises(NotAPreview, match="not a preview"):
        main(base, ["--drop"])
    with pytest.raises(NotAPreview, match="not a preview"):
        drop_preview(master_connect(rds_like), LoginRoles("record"), "record_pr_0")
    assert databases_and_roles(rds_like, base_names) == set(base_names)
    # Nor a database named like a preview's but owned by another role.
    with psycopg.connect(rds_like.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE record_pr_9 OWNER record")
    try:
        with pytest.raises(NotAPreview, match="owned by record"):
            drop_preview(master_connect(rds_like), LoginRoles("record_pr_9"), "record_pr_9")
        assert databases_and_roles(rds_like, ("record_pr_9",)) == {"record_pr_9"}
    finally:
        with psycopg.connect(rds_like.url("postgres"), autocommit=True) as conn:
            conn.execute("DROP DATABASE record_pr_9")
    # The flag is all the command takes.
    assert main(env, ["--drop", "--everything"]) == 2


def credentials_and_databases(server: PostgresServer) -> list[tuple[object, ...]]:
    """Every role's password hash and every database with its owner: what a Job could change."""
    with psycopg.connect(server.url("postgres")) as conn:
        return conn.execute(
            "SELECT 'role', rolname, rolpassword FROM pg_authid "
            "UNION ALL SELECT 'db', datname, pg_get_userbyid(datdba) FROM pg_database "
            "ORDER BY 1, 2"
        ).fetchall()


@pytest.mark.parametrize(
    ("database", "owner", "drop"),
    [("record", "record", False), ("record_pr_0", "record", False), ("record", "record", True)],
)
def test_a_preview_job_touches_its_own_database_only(
    rds_like: PostgresServer,
    master_secret: str,
    plans: dict[str, Plan],
    database: str,
    owner: str,
    drop: bool,
) -> None:
    """Preview mode (DB_PREVIEW_NUMBER, which the rendered provisioner Job sets): a preview Job
    naming the base's database or owner -- whose roles the master may ALTER, passwords and
    all -- is refused before it connects, and nothing changes."""
    assert main(job_env(rds_like, master_secret, "record", "record")) == 0
    env = provisioner_env(plans["preview"], rds_like, master_secret)
    assert env[ENV_PREVIEW] == "0"
    env.update({ENV_DATABASE: database, ENV_OWNER: owner})
    env.update({variable: "attacker-pw" for variable in ENV_PASSWORDS.values()})
    before = credentials_and_databases(rds_like)

    assert main(env, ["--drop"] if drop else []) == 3

    assert credentials_and_databases(rds_like) == before
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            login(rds_like, "record", "record", "record").replace("record-owner-pw", "attacker-pw")
        ).close()
