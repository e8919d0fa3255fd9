"""The workflows' roles trust main's copy of their workflow only (infra/github_oidc.py): not a
pull request's edit of it, not another branch's, not another environment's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from infra.github_oidc import (
    AUDIENCE,
    MAX_SESSION_SECONDS,
    allows,
    roles,
    subject,
    trust_policy,
    workflow_ref,
)
from infra.github_oidc import main as print_policies
from tests.infra.test_workflows import WORKFLOWS, jobs

REPO = "acme/record"
PROVIDER = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"


def token(environment: str, workflow: str, ref: str, repo: str = REPO) -> dict[str, str]:
    """The claims GitHub puts in a job's token, ``sub`` from the customised template."""
    job_workflow_ref = workflow_ref(repo, workflow, ref)
    return {
        "aud": AUDIENCE,
        "repository": repo,
        "environment": environment,
        "job_workflow_ref": job_workflow_ref,
        "sub": subject(repo, environment, job_workflow_ref),
    }


PREVIEW = trust_policy(PROVIDER, REPO, "preview", ["preview.yml", "reaper.yml"])


def test_only_mains_workflow_gets_the_preview_role() -> None:
    # (a) preview.yml as main has it: pull_request_target runs the default branch's copy.
    assert allows(PREVIEW, token("preview", "preview.yml", "refs/heads/main"))
    assert allows(PREVIEW, token("preview", "reaper.yml", "refs/heads/main"))
    # (b) a pull request's own edit of the workflow (the pull_request event runs it).
    assert not allows(PREVIEW, token("preview", "preview.yml", "refs/pull/7/merge"))
    # (c) the same file pushed to another branch, or a pull request into that branch.
    assert not allows(PREVIEW, token("preview", "preview.yml", "refs/heads/feature"))
    # Nor another workflow, environment, repository or audience.
    assert not allows(PREVIEW, token("preview", "ci.yml", "refs/heads/main"))
    assert not allows(PREVIEW, token("preview-build", "preview.yml", "refs/heads/main"))
    assert not allows(PREVIEW, token("preview", "preview.yml", "refs/heads/main", "evil/record"))
    assert not allows(
        PREVIEW, {**token("preview", "preview.yml", "refs/heads/main"), "aud": "other"}
    )


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_a_stacks_role_trusts_mains_deploy_workflow_only(stack: str) -> None:
    """The attack: any branch's workflow naming `environment: dev` satisfied a
    repo:<o>/<r>:environment:dev trust."""
    policy = trust_policy(PROVIDER, REPO, stack, ["deploy.yml"])
    assert allows(policy, token(stack, "deploy.yml", "refs/heads/main"))
    assert not allows(policy, token(stack, "deploy.yml", "refs/heads/feature"))
    assert not allows(policy, token(stack, "evil.yml", "refs/heads/feature"))
    assert not allows(policy, token(stack, "deploy.yml", "refs/pull/3/merge"))
    other = "prod" if stack != "prod" else "dev"
    assert not allows(policy, token(other, "deploy.yml", "refs/heads/main"))


def test_the_evaluation_can_say_yes_to_a_bare_subject() -> None:
    """allows() is not a constant no: the old, environment-only trust let every ref in."""
    old = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringLike": {
                        "token.actions.githubusercontent.com:sub": f"repo:{REPO}:environment:dev*"
                    }
                },
            }
        ]
    }
    assert allows(old, token("dev", "evil.yml", "refs/heads/feature"))


def test_every_workflow_role_is_listed_with_the_environments_the_workflows_use() -> None:
    used: dict[str, set[str]] = {}
    for path in WORKFLOWS.glob("*.yml"):
        for job in jobs(path.stem).values():
            if not any("configure-aws-credentials" in s.get("uses", "") for s in job["steps"]):
                continue
            environment = job["environment"]
            name = environment if isinstance(environment, str) else environment["name"]
            used.setdefault(name, set()).add(path.name)
    listed = {role.environment: set(role.workflows) for role in roles()}
    assert used == listed


@pytest.fixture
def iam(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        import boto3

        yield boto3.client("iam", region_name="us-east-1")


def test_iam_takes_each_policy_with_two_hour_sessions(
    iam: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert print_policies(["--repo", REPO, "--account", "123456789012"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert set(documents) == {role.name for role in roles()}
    for name, document in documents.items():
        created = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(document["assumeRolePolicy"]),
            MaxSessionDuration=document["maxSessionDuration"],
        )["Role"]
        assert created["MaxSessionDuration"] == MAX_SESSION_SECONDS
        stored = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        stored = json.loads(stored) if isinstance(stored, str) else stored
        assert stored == document["assumeRolePolicy"]
        environment = document["environment"]
        workflow = "preview.yml" if name.startswith("record-preview-") else "deploy.yml"
        assert allows(stored, token(environment, workflow, "refs/heads/main"))
        assert not allows(stored, token(environment, workflow, "refs/pull/1/merge"))
