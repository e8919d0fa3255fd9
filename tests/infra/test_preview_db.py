"""A preview's database and Valkey user are resources of its own stack, and its destroy drops
the database (#13, item 3).

Pulumi mocks run a program; they cannot run a destroy. What is shown instead: (1) every resource
the preview stack registers is one Pulumi deletes on destroy (none protected, retained or
``deletedWith`` another), among them the Valkey user and ``<prefix>-database``; (2) that
resource's delete is ``python -m infra.preview_db drop``, run here end to end with a fake
``kubectl`` on PATH; (3) the drop Job it runs (``python -m infra.db_bootstrap --drop``) drops
the database and roles on a real PostgreSQL (``tests/infra/test_db_bootstrap.py``).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from pulumi.runtime import mocks

from infra import preview_db
from infra.plan import REPO_ROOT, Plan, render
from infra.provisioner import DROP_JOB_PREFIX, JOB_PREFIX
from tests.infra.conftest import one
from tests.infra.test_preview_provisioner import (
    BASE_IMAGE,
    BASE_SERVICE_ACCOUNT,
    PROVISIONING_NAMESPACE,
    migration_job,
    provisioner_job,
)

DATABASE_RESOURCE = "record-pr-0-database"
SECRET_SIG = "4dabf18193072939515e22adb298388d"


@dataclass(frozen=True)
class Registered:
    type: str
    name: str
    custom: bool
    protect: bool
    retain_on_delete: bool
    deleted_with: str
    # Its inputs as sent to the engine: secrets still wrapped, so readable here.
    inputs: dict[str, Any]


@pytest.fixture(scope="module")
def registered() -> list[Registered]:
    """The preview stack rendered once more, with what mocks' inputs leave out: each
    resource's options."""
    out: list[Registered] = []
    original = mocks.MockMonitor.RegisterResource

    def record(self: mocks.MockMonitor, request: Any) -> Any:
        out.append(
            Registered(
                type=request.type,
                name=request.name,
                custom=request.custom,
                protect=request.protect,
                retain_on_delete=request.retainOnDelete,
                deleted_with=request.deletedWith,
                inputs=json_format.MessageToDict(request.object),
            )
        )
        return original(self, request)

    mocks.MockMonitor.RegisterResource = record  # type: ignore[method-assign]  # test-only spy
    try:
        render("preview")
    finally:
        mocks.MockMonitor.RegisterResource = original  # type: ignore[method-assign]
    return out


def database_resource(registered: list[Registered]) -> Registered:
    (found,) = [r for r in registered if r.name == DATABASE_RESOURCE]
    return found


def drop_job_of(resource: Registered) -> dict[str, Any]:
    return dict(json.loads(resource.inputs["environment"][preview_db.ENV_JOB]))


def test_every_preview_resource_is_deleted_on_destroy(registered: list[Registered]) -> None:
    kinds = {r.type for r in registered if r.custom}
    # The database (a Command whose delete drops it) and the Valkey user, in the preview's
    # stack, not only in a workflow's script.
    assert {
        "command:local:Command",
        "aws:elasticache/user:User",
        "aws:elasticache/userGroupAssociation:UserGroupAssociation",
    } <= kinds
    assert len([r for r in registered if r.custom]) >= 30
    for resource in registered:
        name = (resource.type, resource.name)
        assert not resource.protect, name
        assert not resource.retain_on_delete, name
        assert not resource.deleted_with, name


def test_the_database_resource_drops_it_through_the_base(
    registered: list[Registered], plans: dict[str, Plan]
) -> None:
    resource = database_resource(registered)
    assert resource.inputs["delete"] == preview_db.command_line("drop")
    assert resource.inputs["delete"].endswith("-m infra.preview_db drop")
    # Create and update check, never drop; an update, not a replacement (which would run the
    # delete), is what any change makes.
    assert (
        resource.inputs["create"] == resource.inputs["update"] == preview_db.command_line("check")
    )
    assert resource.inputs["triggers"] == ["record_pr_0", "record_pr_0"]
    # The kubeconfig stays a secret in the state.
    assert SECRET_SIG in resource.inputs["environment"][preview_db.ENV_KUBECONFIG]

    job = drop_job_of(resource)
    assert preview_db.drop_job({preview_db.ENV_JOB: json.dumps(job)}) == job
    assert job["metadata"]["name"] == f"{DROP_JOB_PREFIX}pr-0"
    assert job["metadata"]["namespace"] == PROVISIONING_NAMESPACE
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == BASE_SERVICE_ACCOUNT
    container = one(pod["containers"])
    assert container["image"] == BASE_IMAGE
    assert container["command"] == ["python", "-m", "infra.db_bootstrap", "--drop"]
    # The provisioner Job but for its command: the same account, hardening, labels (which the
    # base's NetworkPolicy selects), inputs and Secret.
    provision = provisioner_job(plans["preview"])["inputs"]
    provision_pod = provision["spec"]["template"]["spec"]
    provision_container = one(provision_pod["containers"])
    assert {k: v for k, v in container.items() if k != "command"} == {
        k: v for k, v in provision_container.items() if k != "command"
    }
    assert {k: v for k, v in pod.items() if k != "containers"} == {
        k: v for k, v in provision_pod.items() if k != "containers"
    }
    assert job["spec"]["template"]["metadata"]["labels"] == provision["metadata"]["labels"]
    assert one(container["envFrom"])["secretRef"]["name"] == f"{JOB_PREFIX}pr-0"
    for key in ("backoffLimit", "activeDeadlineSeconds"):
        assert job["spec"][key] == provision["spec"][key]


def test_the_database_resource_goes_after_the_workloads_and_before_the_job(
    plans: dict[str, Plan],
) -> None:
    plan = plans["preview"]
    resource = one(plan.of_type("command:local:Command"))
    assert resource["name"] == DATABASE_RESOURCE
    # It depends on the provisioner Job (so it is deleted before the Job and its Secret) ...
    assert provisioner_job(plan)["name"] in resource["dependsOn"]
    # ... and the preview's workloads on it (so they are deleted before it).
    assert DATABASE_RESOURCE in migration_job(plan)["dependsOn"]
    for kind in ("kubernetes:apps/v1:Deployment", "kubernetes:argoproj.io/v1alpha1:Rollout"):
        for workload in plan.of_type(kind):
            if workload["inputs"]["metadata"].get("namespace") == "record-pr-0":
                assert DATABASE_RESOURCE in workload["dependsOn"], workload["name"]


FAKE_KUBECTL = """#!{python}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "-" in args else ""
config = os.environ.get("KUBECONFIG", "")
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    seen = open(config).read() if config and os.path.exists(config) else None
    log.write(json.dumps({{"args": args, "stdin": stdin, "kubeconfig": config,
                          "kubeconfig_text": seen}}) + "\\n")
outcome = os.environ["FAKE_KUBECTL_OUTCOME"]
verb = args[2]
if verb == "wait":
    if outcome == "complete":
        print("job.batch/record-db-drop-pr-0 condition met")
        sys.exit(0)
    print("error: timed out waiting for the condition", file=sys.stderr)
    sys.exit(1)
if verb == "get":
    status = "True" if outcome == "failed" else "False"
    print(json.dumps({{"status": {{"conditions": [{{"type": "Failed", "status": status}}]}}}}))
elif verb == "logs":
    if outcome == "complete":
        print("db-bootstrap: database record_pr_0 dropped; roles gone")
    else:
        print("psycopg.OperationalError: connection to server failed")
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    """(bin directory, call log) of a kubectl that records each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    return bin_dir, tmp_path / "kubectl.jsonl"


def run_delete(
    resource: Registered, fake: tuple[Path, Path], outcome: str, job: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """The resource's delete as pulumi-command runs it: its shell line, from the program's
    directory, with its environment (the kubeconfig, a secret, is ours)."""
    bin_dir, log = fake
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_KUBECTL_LOG": str(log),
        "FAKE_KUBECTL_OUTCOME": outcome,
        preview_db.ENV_JOB: json.dumps(job),
        preview_db.ENV_KUBECONFIG: "apiVersion: v1\nkind: Config\n# the base cluster\n",
    }
    result = subprocess.run(
        ["/bin/sh", "-c", resource.inputs["delete"]],
        cwd=REPO_ROOT / "infra",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def verbs(calls: list[dict[str, Any]]) -> list[str]:
    return [call["args"][2] for call in calls]


def test_the_delete_runs_the_drop_job_and_removes_it(
    registered: list[Registered], fake_kubectl: tuple[Path, Path]
) -> None:
    resource = database_resource(registered)
    job = drop_job_of(resource)
    result, calls = run_delete(resource, fake_kubectl, "complete", job)
    assert result.returncode == 0, result.stderr
    assert "database record_pr_0 dropped" in result.stdout
    assert verbs(calls) == ["delete", "apply", "wait", "logs", "delete"]
    for call in calls:
        # The Job's own namespace, the provisioner's: never the base's.
        assert call["args"][:2] == ["--namespace", PROVISIONING_NAMESPACE]
        # The kubeconfig from the environment, in a file of its own that is gone afterwards.
        assert call["kubeconfig_text"] == "apiVersion: v1\nkind: Config\n# the base cluster\n"
        assert not Path(call["kubeconfig"]).exists()
    applied = json.loads(calls[1]["stdin"])
    assert applied == job
    container = one(applied["spec"]["template"]["spec"]["containers"])
    assert container["image"] == BASE_IMAGE
    assert container["command"][-1] == "--drop"
    assert applied["spec"]["template"]["spec"]["serviceAccountName"] == BASE_SERVICE_ACCOUNT
    assert calls[2]["args"][3:] == [
        "--for=condition=complete",
        "--timeout=10s",
        "job/record-db-drop-pr-0",
    ]
    assert calls[-1]["args"][3:5] == ["job/record-db-drop-pr-0", "--ignore-not-found"]


def test_a_failed_drop_fails_the_delete_with_the_jobs_logs(
    registered: list[Registered], fake_kubectl: tuple[Path, Path]
) -> None:
    resource = database_resource(registered)
    result, calls = run_delete(resource, fake_kubectl, "failed", drop_job_of(resource))
    assert result.returncode == 1
    assert "psycopg.OperationalError: connection to server failed" in result.stderr
    assert (
        "record-staging-db-provisioning/record-db-drop-pr-0 failed: database not dropped"
        in result.stderr
    )
    # The Job goes either way: the next destroy starts afresh.
    assert verbs(calls) == ["delete", "apply", "wait", "get", "logs", "delete"]


def test_only_a_preview_database_drop_job_runs(
    registered: list[Registered], fake_kubectl: tuple[Path, Path]
) -> None:
    resource = database_resource(registered)
    job = drop_job_of(resource)
    container = one(job["spec"]["template"]["spec"]["containers"])
    for variable in container["env"]:
        if variable["name"] in ("DB_NAME", "DB_OWNER_USER"):
            variable["value"] = "record"
    result, calls = run_delete(resource, fake_kubectl, "complete", job)
    assert result.returncode == 1
    assert "'record' (owner 'record') is not a preview's database" in result.stderr
    assert calls == []
    # Nor a Job that provisions instead of dropping.
    container["command"] = ["python", "-m", "infra.db_bootstrap"]
    with pytest.raises(preview_db.DropError, match="not the database drop Job"):
        preview_db.drop_job({preview_db.ENV_JOB: json.dumps(job)})


def test_the_check_wants_kubectl(
    registered: list[Registered], fake_kubectl: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {
        preview_db.ENV_JOB: json.dumps(drop_job_of(database_resource(registered))),
        preview_db.ENV_KUBECONFIG: "{}",
    }
    bin_dir, _ = fake_kubectl
    empty = tmp_path / "empty"
    empty.mkdir()
    saved = os.environ["PATH"]
    try:
        os.environ["PATH"] = str(bin_dir)
        assert preview_db.main(["check"], env) == 0
        os.environ["PATH"] = str(empty)
        assert preview_db.main(["check"], env) == 1
    finally:
        os.environ["PATH"] = saved
    assert preview_db.main(["drop-everything"], env) == 2


@pytest.mark.parametrize(
    ("number", "reason"),
    [(None, "DB_PREVIEW_NUMBER"), ("1", "only 'record_pr_1'"), ("x", "digits only")],
)
def test_the_drop_job_must_be_in_preview_mode_for_its_own_database(
    registered: list[Registered], number: str | None, reason: str
) -> None:
    """Both Jobs carry DB_PREVIEW_NUMBER, the bootstrap's preview mode
    (tests/infra/test_db_bootstrap.py): a drop Job without it, or for another pull request's
    database, is refused here before kubectl runs."""
    job = drop_job_of(database_resource(registered))
    container = one(job["spec"]["template"]["spec"]["containers"])
    assert {"name": "DB_PREVIEW_NUMBER", "value": "0"} in container["env"]
    assert preview_db.drop_job({preview_db.ENV_JOB: json.dumps(job)}) == job
    container["env"] = [e for e in container["env"] if e["name"] != "DB_PREVIEW_NUMBER"]
    if number is not None:
        container["env"].append({"name": "DB_PREVIEW_NUMBER", "value": number})
    with pytest.raises(preview_db.DropError, match=reason):
        preview_db.drop_job({preview_db.ENV_JOB: json.dumps(job)})


FAKE_PULUMI = """#!/bin/sh
# pulumi stack output apiImage --stack <base> --non-interactive
echo "$*" >> "$FAKE_PULUMI_LOG"
[ "$3" = apiImage ] && [ "$5" = "$FAKE_PULUMI_BASE" ] || exit 1
echo "$FAKE_PULUMI_IMAGE"
"""


@pytest.mark.parametrize("readable", [True, False])
def test_the_drop_runs_the_image_the_base_runs_now(
    registered: list[Registered],
    fake_kubectl: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    readable: bool,
) -> None:
    """Staging deploys on every merge while a preview waits to close, and the base admits only
    the image it runs now: the drop reads the base's apiImage at destroy time, and falls back to
    the stored one when it cannot (no pulumi, no access)."""
    resource = database_resource(registered)
    base_stack = resource.inputs["environment"][preview_db.ENV_BASE_STACK]
    assert base_stack  # the preview's record:preview.baseStack
    bin_dir, _ = fake_kubectl
    pulumi = bin_dir / "pulumi"
    pulumi.write_text(FAKE_PULUMI)
    pulumi.chmod(pulumi.stat().st_mode | stat.S_IXUSR)
    newer = "1.dkr.ecr.eu-west-1.amazonaws.com/record-staging/api@sha256:" + "b" * 64
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(bin_dir / "pulumi.log"))
    monkeypatch.setenv("FAKE_PULUMI_BASE", base_stack if readable else "another")
    monkeypatch.setenv("FAKE_PULUMI_IMAGE", newer)
    monkeypatch.setenv(preview_db.ENV_BASE_STACK, base_stack)
    job = drop_job_of(resource)
    result, calls = run_delete(resource, fake_kubectl, "complete", job)
    assert result.returncode == 0, result.stderr
    applied = json.loads(calls[1]["stdin"])
    image = one(applied["spec"]["template"]["spec"]["containers"])["image"]
    assert image == (newer if readable else BASE_IMAGE)
