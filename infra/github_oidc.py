"""Who may assume the workflows' AWS roles: their OIDC trust policies, as JSON documents.

A role trusting ``repo:<owner>/<repo>:environment:<name>`` alone is assumed by any workflow
that names the environment: a pull request's own edit of ``preview.yml`` (the
``pull_request`` event runs the PR's copy of the workflow), or a workflow pushed to any branch
naming ``dev``. Each role here also pins the workflow file *and the ref it was read from*
(GitHub's ``job_workflow_ref`` claim, ``<owner>/<repo>/.github/workflows/<file>@<ref>``): only
the default branch's copy of that workflow gets the role. A pull request's own workflow runs
at ``@refs/pull/<n>/merge``, another branch's at ``@refs/heads/<branch>``.

IAM evaluates only a federated token's standard claims (``aud``, ``sub``): GitHub's docs say
custom claims are unsupported in AWS. So the repository's OIDC subject template is customised
to carry ``job_workflow_ref`` inside ``sub`` (:data:`SUBJECT_CLAIM_KEYS`; DEPLOYMENT.md has the
one ``gh api`` call), and the policy matches the whole subject with ``StringEquals``.

``python -m infra.github_oidc --repo <owner>/<repo> --account <id>`` prints every role's
policy; :func:`allows` evaluates one against a token's claims (the tests' sample tokens).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ISSUER = "token.actions.githubusercontent.com"
AUDIENCE = "sts.amazonaws.com"
# PUT /repos/<owner>/<repo>/actions/oidc/customization/sub: the claims `sub` is made of, in
# order. "context" is `environment:<name>` for a job with an environment.
SUBJECT_CLAIM_KEYS = ("repo", "context", "job_workflow_ref")
DEFAULT_REF = "refs/heads/main"
# prod's `pulumi up` waits for the canary (~21 min) and may run migrations up to 65 min: the
# workflows ask for 2-hour sessions (role-duration-seconds), which the role must allow.
MAX_SESSION_SECONDS = 7200


def workflow_ref(repo: str, workflow: str, ref: str = DEFAULT_REF) -> str:
    """GitHub's ``job_workflow_ref`` for ``.github/workflows/<workflow>`` read at ``ref``."""
    return f"{repo}/.github/workflows/{workflow}@{ref}"


def subject(repo: str, environment: str, job_workflow_ref: str) -> str:
    """The ``sub`` GitHub issues under :data:`SUBJECT_CLAIM_KEYS` for a job in
    ``environment``."""
    return f"repo:{repo}:environment:{environment}:job_workflow_ref:{job_workflow_ref}"


def trust_policy(
    provider_arn: str,
    repo: str,
    environment: str,
    workflows: Sequence[str],
    ref: str = DEFAULT_REF,
) -> dict[str, Any]:
    """The role's trust policy: a job in ``environment`` of one of ``workflows``, as the
    default branch (``ref``) has them, in ``repo``; nothing else."""
    if not workflows:
        raise ValueError("name at least one workflow")
    subjects = sorted(subject(repo, environment, workflow_ref(repo, w, ref)) for w in workflows)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{ISSUER}:aud": AUDIENCE,
                        f"{ISSUER}:sub": subjects if len(subjects) > 1 else subjects[0],
                    }
                },
            }
        ],
    }


def _values(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def allows(policy: Mapping[str, Any], claims: Mapping[str, str]) -> bool:
    """Whether a token with ``claims`` (``sub`` built by GitHub from the template) may assume
    a role with ``policy``: IAM's reading of StringEquals/StringLike, each key matching one of
    its values, every key of every operator required."""
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow" or statement["Action"] != (
            "sts:AssumeRoleWithWebIdentity"
        ):
            continue
        matched = True
        for operator, conditions in statement.get("Condition", {}).items():
            for key, wanted in conditions.items():
                claim = claims.get(key.removeprefix(f"{ISSUER}:"))
                if claim is None:
                    matched = False
                elif operator == "StringEquals":
                    matched &= claim in _values(wanted)
                elif operator == "StringLike":
                    matched &= any(fnmatch.fnmatchcase(claim, p) for p in _values(wanted))
                else:
                    raise ValueError(f"unsupported condition operator {operator}")
        if matched:
            return True
    return False


@dataclass(frozen=True)
class Role:
    """One role the workflows assume: its name, GitHub environment and workflows."""

    name: str
    environment: str
    workflows: tuple[str, ...]
    purpose: str


def roles(stacks: Sequence[str] = ("dev", "staging", "prod")) -> list[Role]:
    """Every role the workflows in .github/workflows assume (their environment's AWS_ROLE_ARN)."""
    found = [
        Role(
            "record-preview-build",
            "preview-build",
            ("preview.yml",),
            "push a pull request's images to staging's ECR repositories, nothing else",
        ),
        Role(
            "record-preview-deploy",
            "preview",
            ("preview.yml", "reaper.yml"),
            "deploy and destroy preview-pr-<n> stacks with main's program",
        ),
    ]
    found += [
        Role(f"record-{s}-deploy", s, ("deploy.yml",), f"build and `pulumi up` {s}") for s in stacks
    ]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.github_oidc", description=__doc__)
    parser.add_argument("--repo", required=True, help="<owner>/<repo>")
    parser.add_argument("--account", required=True, help="the AWS account id")
    parser.add_argument("--ref", default=DEFAULT_REF, help="the default branch's ref")
    args = parser.parse_args(argv)
    provider = f"arn:aws:iam::{args.account}:oidc-provider/{ISSUER}"
    documents = {
        role.name: {
            "environment": role.environment,
            "purpose": role.purpose,
            "maxSessionDuration": MAX_SESSION_SECONDS,
            "assumeRolePolicy": trust_policy(
                provider, args.repo, role.environment, role.workflows, args.ref
            ),
        }
        for role in roles()
    }
    json.dump(documents, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
