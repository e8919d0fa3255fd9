"""Autoscaling has the data it scales on: metrics-server for the API's CPU HPA, and for the
worker's ScaledObject a query KEDA's own login runs, on a real PostgreSQL, against the schema the
migrations build (the rendered trigger, not a copy of its query)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from app.kit.roles import QUEUE_READER_ROLE, LoginRoles
from infra.plan import Plan
from tests.conftest import ROLES, as_role
from tests.infra.conftest import STACKS, of_kind, one

OWNERS = {"dev": "record", "staging": "record", "prod": "record", "preview": "record_pr_0"}


def queue_trigger(plan: Plan) -> dict[str, Any]:
    trigger = one(one(of_kind(plan, "ScaledObject"))["spec"]["triggers"])
    assert trigger["type"] == "postgresql"
    return trigger


@pytest.mark.parametrize("stack", STACKS)
def test_the_api_hpa_has_a_metrics_server(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    hpa = one(of_kind(plan, "HorizontalPodAutoscaler"))
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}
    if stack == "preview":
        return  # its base stack's cluster installs the controllers
    releases = {
        r["inputs"]["chart"]: r["inputs"] for r in plan.of_type("kubernetes:helm.sh/v3:Release")
    }
    assert releases["metrics-server"]["namespace"] == "kube-system"
    assert releases["metrics-server"]["repositoryOpts"]["repo"].startswith(
        "https://kubernetes-sigs.github.io/metrics-server"
    )


@pytest.mark.parametrize("stack", STACKS)
def test_keda_connects_with_its_own_login_and_settings_its_operator_can_use(
    plans: dict[str, Plan], stack: str
) -> None:
    plan = plans[stack]
    trigger = queue_trigger(plan)
    meta = trigger["metadata"]
    # Not a connection string: the app's names an sslrootcert file only the app image has.
    assert "connection" not in meta
    assert "connectionFromEnv" not in meta
    assert not any("sslrootcert" in str(value) for value in meta.values())
    assert meta["userName"] == LoginRoles(OWNERS[stack]).keda
    assert meta["dbName"] == OWNERS[stack]
    assert meta["port"] == "5432"
    assert meta["host"]
    # KEDA's image does not trust the RDS CA: encrypted, unverified (DEPLOYMENT.md).
    assert meta["sslmode"] == "require"

    auth = one(of_kind(plan, "TriggerAuthentication"))
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    secret = one(m for m in of_kind(plan, "Secret") if m["metadata"]["name"] == ref["name"])
    # The password alone: nothing else of any other login's.
    assert set(secret["stringData"]) == {ref["key"]}


def defer(conn: psycopg.Connection[Any], status: str, count: int) -> None:
    for _ in range(count):
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) "
            "VALUES ('default', 'record.example', '{}', %s)",
            (status,),
        )


def test_keda_query_counts_waiting_and_running_jobs_as_keda(
    plans: dict[str, Plan], database_url: str
) -> None:
    meta = queue_trigger(plans["staging"])["metadata"]
    assert meta["userName"] == ROLES.keda
    keda_url = as_role(database_url, meta["userName"])

    with psycopg.connect(keda_url) as conn:
        assert conn.execute(meta["query"]).fetchone() == (0,)
    with psycopg.connect(database_url, autocommit=True) as conn:
        defer(conn, "todo", 5)
        defer(conn, "doing", 2)
        defer(conn, "succeeded", 3)
        defer(conn, "failed", 1)
    with psycopg.connect(keda_url) as conn:
        row = conn.execute(meta["query"]).fetchone()
    # KEDA scans the one column into a float64.
    assert row is not None
    assert len(row) == 1
    assert row[0] == 7
    assert float(meta["activationTargetQueryValue"]) < row[0]


def test_keda_login_reads_the_depth_and_nothing_else(database_url: str) -> None:
    with psycopg.connect(as_role(database_url, ROLES.keda), autocommit=True) as conn:
        for statement in (
            "SELECT count(*) FROM procrastinate_jobs",
            "SELECT args FROM procrastinate_jobs",
            "SELECT * FROM procrastinate_workers",
            "SELECT * FROM users",
            "SELECT * FROM recordings",
            "SELECT procrastinate_fetch_job_v2(NULL, NULL)",
            "UPDATE procrastinate_jobs SET status = 'failed'",
            "RESET ROLE; SELECT count(*) FROM procrastinate_jobs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(database_url) as conn:
        acts_as = {
            r[0]
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE pg_has_role(%s, oid, 'SET')", (ROLES.keda,)
            )
        }
        assert acts_as == {ROLES.keda, QUEUE_READER_ROLE}
        assert (
            conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication "
                "FROM pg_roles WHERE rolname = %s",
                (ROLES.keda,),
            ).fetchone()
            == (False,) * 5
        )
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", (ROLES.keda,)
        ).fetchone() == (0,)
