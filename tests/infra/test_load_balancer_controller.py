"""The load-balancer controller's IAM policy is upstream's, for the controller the pinned chart
ships: the vendored file, unedited, on the role its ServiceAccount assumes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from infra.cluster import CHARTS, LBC_IAM_POLICY
from infra.plan import Plan
from tests.infra.conftest import one

BASE_STACKS = ("dev", "staging", "prod")
# infra/vendor/README.md records this digest with the tag the file came from.
VENDORED_SHA256 = "16f232c9d9f79366fe949c4550ad517a202380058a9e48d45a4e215044a20a6a"
# IAM's quota for the inline policies of one role, whitespace not counted.
INLINE_POLICY_QUOTA = 10_240


def controller_role(plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    (role,) = [
        r
        for r in plan.of_type("aws:iam/role:Role")
        if r["name"].endswith("-aws-load-balancer-controller")
    ]
    (inline,) = [
        r for r in plan.of_type("aws:iam/rolePolicy:RolePolicy") if r["name"] == role["name"]
    ]
    return role, inline


def test_the_vendored_file_is_upstreams_for_the_pinned_chart() -> None:
    text = LBC_IAM_POLICY.read_text()
    assert hashlib.sha256(text.encode()).hexdigest() == VENDORED_SHA256
    readme = (LBC_IAM_POLICY.parent.parent / "README.md").read_text()
    assert VENDORED_SHA256 in readme
    # eks-charts' aws-load-balancer-controller 1.x ships controller v2.x (same minor, patch).
    chart = CHARTS["aws-load-balancer-controller"][1]
    assert f"tag `v2.{chart.split('.', 1)[1]}`" in readme
    document = json.loads(text)
    assert document["Version"] == "2012-10-17"
    assert len(re.sub(r"\s", "", text)) <= INLINE_POLICY_QUOTA


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_the_controller_role_carries_the_vendored_policy(
    plans: dict[str, Plan], stack: str
) -> None:
    plan = plans[stack]
    role, inline = controller_role(plan)
    assert inline["inputs"]["policy"] == LBC_IAM_POLICY.read_text()
    assert inline["inputs"]["role"].endswith(role["name"])
    trust = json.loads(role["inputs"]["assumeRolePolicy"])
    (condition,) = [s["Condition"]["StringEquals"] for s in trust["Statement"]]
    assert "system:serviceaccount:kube-system:aws-load-balancer-controller" in condition.values()
    # The chart's ServiceAccount is the one that assumes it, and no other policy is attached.
    release = one(
        r["inputs"]
        for r in plan.of_type("kubernetes:helm.sh/v3:Release")
        if r["inputs"]["chart"] == "aws-load-balancer-controller"
    )
    assert release["version"] == CHARTS["aws-load-balancer-controller"][1]
    values = release["values"]
    assert values["serviceAccount"]["name"] == "aws-load-balancer-controller"
    assert "eks.amazonaws.com/role-arn" in values["serviceAccount"]["annotations"]
    attached = [
        r
        for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if r["name"].startswith(role["name"])
    ]
    assert attached == []


@pytest.fixture
def iam(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        yield boto3.client("iam", region_name="us-east-1")


def test_iam_accepts_the_policy_document(iam: Any) -> None:
    document = LBC_IAM_POLICY.read_text()
    # moto checks a document's grammar (versions, effects, action and resource shapes).
    iam.create_policy(PolicyName="aws-load-balancer-controller", PolicyDocument=document)
    iam.create_role(
        RoleName="aws-load-balancer-controller",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "eks.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    iam.put_role_policy(
        RoleName="aws-load-balancer-controller",
        PolicyName="aws-load-balancer-controller",
        PolicyDocument=document,
    )
    stored = iam.get_role_policy(
        RoleName="aws-load-balancer-controller", PolicyName="aws-load-balancer-controller"
    )["PolicyDocument"]
    assert stored == json.loads(document)
    with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
        iam.create_policy(PolicyName="broken", PolicyDocument=json.dumps({"Statement": []}))
