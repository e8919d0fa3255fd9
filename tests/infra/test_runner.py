"""The in-VPC deploy runner (issue #12, defect 2): with ``cluster.deployFromVpc`` and
``cluster.runnerRepository`` the stack provisions a CodeBuild-hosted GitHub Actions runner in
its private subnets that can reach the private API endpoint. Any job that names its label runs
on it, so its role holds only what CodeBuild needs (no Kubernetes access, no role to assume:
the jobs take their credentials from GitHub OIDC), and with ``cluster.runnerActorIds`` only
those GitHub accounts' jobs start it; without ``deployFromVpc``, no runner."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.iam.access_control import IAMPolicy, PermissionResult

from infra.config import ConfigError
from infra.plan import ACCOUNT, Plan, render
from infra.runner import webhook_filter_groups
from tests.infra.conftest import STACKS, one

REGION = "eu-west-1"  # staging's
PROJECT = "record-staging-deploy-runner"
LABEL = "codebuild-record-staging-deploy-runner-${{ github.run_id }}-${{ github.run_attempt }}"
RUNNER_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{PROJECT}"
DEPLOY_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/record-staging-deploy"
CLUSTER_ARN = f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/record-staging"
RUNNER = {"deployFromVpc": True, "runnerRepository": "acme/record"}
VPC_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/offline-placeholder-record-staging-vpc"
# GitHub account ids (numeric, as `gh api users/<login> --jq .id` prints them).
ACTORS = ["583231", "9919"]
# EC2's Describe* calls have no resource-level permissions: "*" is the only resource they take.
UNSCOPABLE = {
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
}

VARIANTS = [
    pytest.param({**RUNNER, "privateOnly": True}, id="private-only"),
    # The transition: deploy publicly with the runner, then switch to privateOnly.
    pytest.param(
        {**RUNNER, "publicAccessCidrs": ["203.0.113.0/24"]}, id="public-during-transition"
    ),
]


@pytest.fixture(scope="module", params=VARIANTS)
def plan(request: pytest.FixtureRequest) -> Plan:
    return render("staging", {"record:cluster": request.param})


def _named(plan: Plan, type_token: str, name: str) -> dict[str, Any]:
    return dict(one(r for r in plan.of_type(type_token) if r["name"] == name)["inputs"])


def _id(name: str) -> str:
    # The id the mocks give a resource (infra/plan.py).
    return f"offline-placeholder-{name}"


def _private_subnet_ids(plan: Plan) -> list[str]:
    names = sorted(
        r["name"]
        for r in plan.of_type("aws:ec2/subnet:Subnet")
        if re.fullmatch(r"record-staging-private-\d", r["name"])
    )
    assert names
    return [_id(n) for n in names]


def _cluster_security_group(plan: Plan) -> str:
    """The EKS cluster security group, as the database's group admits it."""
    db = _named(plan, "aws:ec2/securityGroup:SecurityGroup", "record-staging-db")
    (group,) = one(db["ingress"])["securityGroups"]
    assert isinstance(group, str)
    return group


def _documents(plan: Plan) -> list[dict[str, Any]]:
    role_id = _id(PROJECT)
    documents = [
        json.loads(r["inputs"]["policy"])
        for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
        if r["inputs"]["role"] == role_id
    ]
    assert documents
    attached = [
        r
        for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if r["inputs"]["role"] == PROJECT
    ]
    assert attached == []
    return documents


def _statements(plan: Plan) -> list[dict[str, Any]]:
    return [s for d in _documents(plan) for s in d["Statement"]]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


# -- where it runs -----------------------------------------------------------------------------


def test_the_runner_builds_in_the_private_subnets_with_a_group_of_its_own(plan: Plan) -> None:
    project = _named(plan, "aws:codebuild/project:Project", PROJECT)
    vpc = project["vpcConfig"]
    assert vpc["vpcId"] == _id("record-staging-vpc")
    assert vpc["subnets"] == _private_subnet_ids(plan)
    assert vpc["securityGroupIds"] == [_id(PROJECT)]
    group = _named(plan, "aws:ec2/securityGroup:SecurityGroup", PROJECT)
    # Nothing connects in (the runner polls GitHub); out, HTTPS, and HTTP for apt-get (the
    # jobs install jq and espeak-ng from Ubuntu's archive, which serves over port 80).
    assert group["ingress"] == []
    assert group["egress"] == [
        {
            "description": "HTTPS out",
            "protocol": "tcp",
            "fromPort": 443,
            "toPort": 443,
            "cidrBlocks": ["0.0.0.0/0"],
        },
        {
            "description": "HTTP out (apt)",
            "protocol": "tcp",
            "fromPort": 80,
            "toPort": 80,
            "cidrBlocks": ["0.0.0.0/0"],
        },
    ]
    assert project["environment"]["type"] == "LINUX_CONTAINER"
    assert project["serviceRole"] == RUNNER_ROLE_ARN
    assert project["source"] == {
        "type": "GITHUB",
        "location": "https://github.com/acme/record.git",
        "gitCloneDepth": 1,
    }
    log_group = _named(plan, "aws:cloudwatch/logGroup:LogGroup", PROJECT)
    assert project["logsConfig"]["cloudwatchLogs"]["groupName"] == log_group["name"]


def test_github_workflow_jobs_start_it(plan: Plan) -> None:
    webhook = _named(plan, "aws:codebuild/webhook:Webhook", PROJECT)
    assert webhook["projectName"] == PROJECT
    assert webhook["buildType"] == "BUILD"
    # The repository's own webhook: an organization or global scope would take jobs queued
    # in every repository of the owner.
    assert "scopeConfiguration" not in webhook
    assert webhook["filterGroups"] == [
        {"filters": [{"type": "EVENT", "pattern": "WORKFLOW_JOB_QUEUED"}]}
    ]
    # The label CodeBuild routes on is the project's name: the exported label names it.
    assert plan.outputs["deployRunnerLabel"] == LABEL


def test_only_the_configured_github_accounts_start_it() -> None:
    plan = render(
        "staging", {"record:cluster": {**RUNNER, "privateOnly": True, "runnerActorIds": ACTORS}}
    )
    webhook = _named(plan, "aws:codebuild/webhook:Webhook", PROJECT)
    (group,) = webhook["filterGroups"]
    assert group["filters"] == [
        {"type": "EVENT", "pattern": "WORKFLOW_JOB_QUEUED"},
        {"type": "ACTOR_ACCOUNT_ID", "pattern": "^(583231|9919)$"},
    ]
    # CodeBuild matches the pattern as a regular expression against the actor's id: anchored,
    # no other account's id (a longer one containing an allowed one included) matches.
    pattern = re.compile(group["filters"][1]["pattern"])
    assert all(pattern.search(actor) for actor in ACTORS)
    for stranger in ["5832310", "1583231", "99", "583231|9919", ""]:
        assert not pattern.search(stranger), stranger


@pytest.mark.parametrize(
    ("actors", "message"),
    [
        (["octocat"], "'octocat' is not a GitHub account id"),
        (["0123"], "'0123' is not a GitHub account id"),
        (["1.*"], "'1.*' is not a GitHub account id"),
        ("583231", "runnerActorIds must be a list"),
    ],
)
def test_runner_actors_are_github_account_ids(actors: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        render(
            "staging",
            {"record:cluster": {**RUNNER, "privateOnly": True, "runnerActorIds": actors}},
        )


def test_runner_actors_go_with_a_runner() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("runnerActorIds goes with cluster.deployFromVpc")
    ):
        render(
            "staging",
            {"record:cluster": {"publicAccessCidrs": ["203.0.113.0/24"], "runnerActorIds": ACTORS}},
        )


def test_webhook_filter_escapes_what_it_is_given() -> None:
    # The config admits digits only; the filter stays a literal match whatever reaches it.
    (group,) = webhook_filter_groups(("1.2",))
    filters = group.filters
    assert isinstance(filters, list)
    assert filters[1].pattern == r"^(1\.2)$"


def test_the_cluster_security_group_admits_the_runner_on_443(plan: Plan) -> None:
    rule = one(
        r["inputs"]
        for r in plan.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r["inputs"].get("referencedSecurityGroupId") == _id(PROJECT)
    )
    assert rule["securityGroupId"] == _cluster_security_group(plan)
    assert (rule["ipProtocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 443, 443)
    assert "cidrIpv4" not in rule
    # With the stack's own runner, no group opens the endpoint to the whole VPC.
    cluster = one(plan.of_type("aws:eks/cluster:Cluster"))["inputs"]["vpcConfig"]
    assert not cluster.get("securityGroupIds")
    assert not any(
        g["name"] == "record-staging-eks-deploy"
        for g in plan.of_type("aws:ec2/securityGroup:SecurityGroup")
    )


def test_the_runner_role_has_no_access_to_the_cluster(plan: Plan) -> None:
    """Any pull request can queue a job with the runner's label: the runner's own identity
    must not be a way into the cluster (it was cluster admin through an access entry)."""
    for type_token in (
        "aws:eks/accessEntry:AccessEntry",
        "aws:eks/accessPolicyAssociation:AccessPolicyAssociation",
    ):
        assert not [
            r
            for r in plan.of_type(type_token)
            if r["name"] == PROJECT or r["inputs"].get("principalArn") == RUNNER_ROLE_ARN
        ], type_token


# -- its role ----------------------------------------------------------------------------------


def test_only_codebuild_for_this_project_assumes_the_runner_role(plan: Plan) -> None:
    role = _named(plan, "aws:iam/role:Role", PROJECT)
    statement = one(json.loads(role["assumeRolePolicy"])["Statement"])
    assert statement["Principal"] == {"Service": "codebuild.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{PROJECT}"},
    }


def test_the_runner_policy_names_its_actions_and_scopes_its_resources(plan: Plan) -> None:
    statements = _statements(plan)
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource"} & set(statement)
        actions = _as_list(statement["Action"])
        assert all("*" not in action.split(":", 1)[1] for action in actions), actions
        resources = _as_list(statement["Resource"])
        if resources == ["*"]:
            assert set(actions) <= UNSCOPABLE, actions
            continue
        for resource in resources:
            assert resource.startswith("arn:aws:"), resource
            assert f":{ACCOUNT}:" in resource, resource
    actions = {a for s in statements for a in _as_list(s["Action"])}
    assert actions == UNSCOPABLE | {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "ec2:CreateNetworkInterface",
        "ec2:DeleteNetworkInterface",
        "ec2:CreateNetworkInterfacePermission",
        "eks:DescribeCluster",
    }
    by_action = {a: s for s in statements for a in _as_list(s["Action"])}
    assert by_action["eks:DescribeCluster"]["Resource"] == CLUSTER_ARN
    subnet_arns = [f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/{s}" for s in _private_subnet_ids(plan)]
    assert by_action["ec2:CreateNetworkInterfacePermission"]["Condition"] == {
        "StringEquals": {
            "ec2:Subnet": subnet_arns,
            "ec2:AuthorizedService": "codebuild.amazonaws.com",
        }
    }
    # Interface ids are unknown in advance: a delete is held to the runner's subnets and VPC
    # by condition keys, so no other interface in the account can go.
    assert by_action["ec2:DeleteNetworkInterface"]["Condition"] == {
        "StringEquals": {"ec2:Subnet": subnet_arns, "ec2:Vpc": VPC_ARN}
    }
    for statement in statements:
        resources = _as_list(statement["Resource"])
        if any(r.endswith(":network-interface/*") for r in resources):
            # Unconditioned, only the create, whose other resources (subnets, the group) hold it.
            assert "Condition" in statement or statement["Action"] == "ec2:CreateNetworkInterface"
    create = _as_list(by_action["ec2:CreateNetworkInterface"]["Resource"])
    assert create == [
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:network-interface/*",
        *subnet_arns,
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/{_id(PROJECT)}",
    ]


@pytest.fixture
def iam(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("iam", region_name=REGION)


def test_iam_accepts_the_runner_role_and_grants_no_more_than_it_says(plan: Plan, iam: Any) -> None:
    role = _named(plan, "aws:iam/role:Role", PROJECT)
    iam.create_role(RoleName=PROJECT, AssumeRolePolicyDocument=role["assumeRolePolicy"])
    documents = _documents(plan)
    # IAM refuses a malformed document here (versions, effects, action and resource shapes).
    for index, document in enumerate(documents):
        iam.create_policy(PolicyName=f"{PROJECT}-{index}", PolicyDocument=json.dumps(document))
        iam.put_role_policy(
            RoleName=PROJECT, PolicyName=f"p{index}", PolicyDocument=json.dumps(document)
        )

    def allowed(action: str, resource: str) -> bool:
        results = [
            IAMPolicy(json.dumps(d)).is_action_permitted(action, resource) for d in documents
        ]
        return PermissionResult.PERMITTED in results

    log_group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/codebuild/{PROJECT}"
    assert allowed("logs:PutLogEvents", f"{log_group}:log-stream:build-1")
    assert not allowed(
        "logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/other:log-stream:x"
    )
    assert allowed("eks:DescribeCluster", CLUSTER_ARN)
    assert not allowed("eks:DescribeCluster", f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/other")
    # A job's credentials come from GitHub OIDC: the runner's role assumes nothing.
    assert not allowed("sts:AssumeRole", DEPLOY_ROLE_ARN)
    assert not allowed("sts:AssumeRole", f"arn:aws:iam::{ACCOUNT}:role/record-prod-deploy")
    # What `pulumi up` does is the deploy role's, not the runner's.
    for action, resource in [
        ("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/anything"),
        ("iam:PassRole", DEPLOY_ROLE_ARN),
        ("eks:UpdateClusterConfig", CLUSTER_ARN),
        ("ec2:AuthorizeSecurityGroupIngress", "*"),
        ("s3:GetObject", "arn:aws:s3:::record-staging-state/x"),
        ("secretsmanager:GetSecretValue", "*"),
    ]:
        assert not allowed(action, resource), action


# -- when there is none ------------------------------------------------------------------------

RUNNER_TYPES = ("aws:codebuild/project:Project", "aws:codebuild/webhook:Webhook")


@pytest.mark.parametrize("stack", STACKS)
def test_no_runner_without_deploy_from_vpc(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    for type_token in RUNNER_TYPES:
        assert plan.of_type(type_token) == [], type_token
    assert not any(r["name"] == PROJECT for r in plan.resources)
    assert "deployRunnerLabel" not in plan.outputs


@pytest.mark.parametrize("repository", ["acme", "acme/record/extra", "https://github.com/a/b"])
def test_a_repository_that_is_not_owner_slash_name_is_refused(repository: str) -> None:
    # Refused by the config (or, should a repository reach the runner unchecked, by it).
    with pytest.raises(ConfigError, match=r"cluster\.runnerRepository.*owner/name"):
        render(
            "staging",
            {
                "record:cluster": {
                    "privateOnly": True,
                    "deployFromVpc": True,
                    "runnerRepository": repository,
                }
            },
        )
