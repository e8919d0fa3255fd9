"""The cluster a stack builds: how `pulumi up` reaches its API, which Kubernetes version it runs
(judged on an injected day, so these tests do not rot), and where Prometheus keeps its data."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from typing import Any

import pytest

from infra.config import (
    DEFAULT_KUBERNETES_VERSION,
    EKS_KUBERNETES_SUPPORT,
    ClusterConfig,
    ConfigError,
    kubernetes_support,
)
from infra.database import engine_version
from infra.plan import Plan, render
from tests.infra.conftest import STACKS, of_kind, one

EKS_STACKS = ("staging", "prod")
# The stack files' placeholder (a documentation range).
STACK_FILE_CIDRS = ["203.0.113.0/24"]
# The repository whose deploy workflows an in-VPC runner serves (cluster.deployFromVpc).
RUNNER_REPOSITORY = "example-org/record"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
# The day issue #12 was filed against: 1.31 had left extended support a week before.
ISSUE_DAY = date(2026, 12, 3)


def _vpc_config(plan: Plan) -> dict[str, Any]:
    return dict(one(plan.of_type(EKS_CLUSTER))["inputs"]["vpcConfig"])


# -- deploy path -----------------------------------------------------------------------------


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_the_api_endpoint_is_public_only_to_the_configured_cidrs(
    plans: dict[str, Plan], stack: str
) -> None:
    vpc = _vpc_config(plans[stack])
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["endpointPublicAccess"] is True
    assert vpc["publicAccessCidrs"] == STACK_FILE_CIDRS
    assert not vpc.get("securityGroupIds")


@pytest.mark.parametrize("stack", EKS_STACKS)
@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({}, "cluster.publicAccessCidrs is required"),
        ({"publicAccessCidrs": []}, "cluster.publicAccessCidrs is required"),
        ({"publicAccessCidrs": ["0.0.0.0/0"]}, "not 0.0.0.0/0 (the whole internet)"),
        ({"publicAccessCidrs": ["203.0.113.0/24", "::/0"]}, "not ::/0 (the whole internet)"),
        ({"publicAccessCidrs": ["203.0.113.7/24"]}, "'203.0.113.7/24' is not a CIDR"),
        ({"publicAccessCidrs": ["office"]}, "'office' is not a CIDR"),
        ({"publicAccessCidrs": "203.0.113.0/24"}, "must be a list of CIDRs"),
        ({"privateOnly": True}, "cluster.privateOnly needs cluster.deployFromVpc: true"),
        (
            {"privateOnly": True, "deployFromVpc": True, "publicAccessCidrs": STACK_FILE_CIDRS},
            "drop cluster.publicAccessCidrs",
        ),
        (
            {"privateOnly": True, "deployFromVpc": True},
            "cluster.deployFromVpc needs cluster.runnerRepository",
        ),
        (
            {"deployFromVpc": True, "publicAccessCidrs": STACK_FILE_CIDRS},
            "cluster.deployFromVpc needs cluster.runnerRepository",
        ),
        (
            {"runnerRepository": RUNNER_REPOSITORY, "publicAccessCidrs": STACK_FILE_CIDRS},
            "cluster.runnerRepository goes with cluster.deployFromVpc: true",
        ),
        (
            {"privateOnly": "yes", "publicAccessCidrs": STACK_FILE_CIDRS},
            "record:cluster.privateOnly must be a valid boolean, got 'yes'",
        ),
        (
            {"publicEndpoint": True, "adminCidrs": STACK_FILE_CIDRS},
            "cluster.publicEndpoint is gone",
        ),
    ],
)
def test_a_cluster_without_a_deploy_path_is_refused(
    stack: str, cluster: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        render(stack, {"record:cluster": cluster})


@pytest.mark.parametrize(
    "repository", ["record", "-example/record", "example-/record", "example/..", "a/b/c", "a b/c"]
)
def test_the_runner_repository_is_a_github_owner_and_name(repository: str) -> None:
    cluster = {"deployFromVpc": True, "runnerRepository": repository}
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"record:cluster.runnerRepository must be a GitHub repository as owner/name, "
            f"got {repository!r}"
        ),
    ):
        render("staging", {"record:cluster": {**cluster, "publicAccessCidrs": STACK_FILE_CIDRS}})


def test_a_runner_in_the_vpc_may_come_before_the_public_endpoint_closes() -> None:
    """The transition to privateOnly: the runner first, the public endpoint still open."""
    cluster = {
        "deployFromVpc": True,
        "runnerRepository": RUNNER_REPOSITORY,
        "publicAccessCidrs": STACK_FILE_CIDRS,
    }
    vpc = _vpc_config(render("staging", {"record:cluster": cluster}))
    assert vpc["endpointPublicAccess"] is True
    assert vpc["publicAccessCidrs"] == STACK_FILE_CIDRS


def test_private_only_opens_the_private_endpoint_to_a_deploy_inside_the_vpc() -> None:
    # The runner's own way in (its security group) is tests/infra/test_runner.py's.
    cluster = {"privateOnly": True, "deployFromVpc": True, "runnerRepository": RUNNER_REPOSITORY}
    vpc = _vpc_config(render("staging", {"record:cluster": cluster}))
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["endpointPublicAccess"] is False
    assert not vpc.get("publicAccessCidrs")


def test_an_existing_cluster_keeps_its_own_endpoint() -> None:
    with pytest.raises(ConfigError, match="are for mode 'eks'"):
        render(
            "dev",
            {
                "record:cluster": {
                    "mode": "existing",
                    "vpcId": "vpc-0dev00000000000001",
                    "vpcCidr": "10.20.0.0/16",
                    "privateSubnetIds": ["subnet-0dev0000000000001"],
                    "nodeSecurityGroupId": "sg-0dev00000000000001",
                    "oidcProviderArn": "arn:aws:iam::111111111111:oidc-provider/x",
                    "oidcIssuer": "https://oidc.example.com",
                    "publicAccessCidrs": STACK_FILE_CIDRS,
                }
            },
        )


# -- Kubernetes version ----------------------------------------------------------------------


def test_the_default_version_is_in_standard_support() -> None:
    assert ClusterConfig().version == DEFAULT_KUBERNETES_VERSION
    assert kubernetes_support(DEFAULT_KUBERNETES_VERSION, ISSUE_DAY) is None


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_the_stacks_build_the_default_version(plans: dict[str, Plan], stack: str) -> None:
    assert one(plans[stack].of_type(EKS_CLUSTER))["inputs"]["version"] == (
        DEFAULT_KUBERNETES_VERSION
    )


def test_a_version_past_extended_support_is_refused() -> None:
    assert kubernetes_support("1.31", date(2026, 11, 25))  # the last day: a warning
    with pytest.raises(
        ConfigError, match=re.escape("1.31 left EKS extended support on 2026-11-26")
    ):
        kubernetes_support("1.31", date(2026, 11, 26))
    with pytest.raises(ConfigError, match="left EKS extended support"):
        kubernetes_support("1.31", ISSUE_DAY)


def test_a_version_past_standard_support_warns() -> None:
    assert kubernetes_support("1.34", date(2026, 12, 1)) is None
    warning = kubernetes_support("1.34", ISSUE_DAY)
    assert warning is not None
    assert "1.34 is in EKS extended support since 2026-12-02" in warning
    assert "2027-12-02" in warning


@pytest.mark.parametrize("version", ["1.36", "1.3", "1.35.2", "v1.35"])
def test_a_version_outside_the_table_is_refused(version: str) -> None:
    with pytest.raises(ConfigError, match="not in the EKS support table"):
        kubernetes_support(version, ISSUE_DAY)


def test_the_support_table_follows_the_calendar_rule() -> None:
    """Standard support, then 12 months of extended support; one row per minor version."""
    for version, (standard_end, extended_end) in EKS_KUBERNETES_SUPPORT.items():
        assert re.fullmatch(r"1\.\d+", version)
        assert timedelta(days=365) <= extended_end - standard_end <= timedelta(days=366), version
    assert EKS_KUBERNETES_SUPPORT["1.31"][1] == date(2026, 11, 26)
    newest = max(EKS_KUBERNETES_SUPPORT, key=lambda v: int(v.split(".")[1]))
    assert newest == DEFAULT_KUBERNETES_VERSION


def test_the_program_refuses_an_unsupported_version() -> None:
    # 1.29 left extended support on 2026-03-23: refused on any day this test runs.
    with pytest.raises(ConfigError, match=re.escape("1.29 left EKS extended support")):
        render(
            "staging",
            {"record:cluster": {"publicAccessCidrs": STACK_FILE_CIDRS, "version": "1.29"}},
        )


# -- Prometheus storage ----------------------------------------------------------------------


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_prometheus_keeps_its_data_on_encrypted_gp3(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    addon = one(
        a
        for a in plan.of_type("aws:eks/addon:Addon")
        if a["inputs"]["addonName"] == "aws-ebs-csi-driver"
    )["inputs"]
    role_name = addon["serviceAccountRoleArn"].rsplit("/", 1)[1]
    role = one(r for r in plan.of_type("aws:iam/role:Role") if r["inputs"].get("name") == role_name)
    trust = json.loads(role["inputs"]["assumeRolePolicy"])["Statement"][0]["Condition"]
    assert (
        "system:serviceaccount:kube-system:ebs-csi-controller-sa" in trust["StringEquals"].values()
    )
    policies = [
        r["inputs"]["policyArn"]
        for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if r["inputs"]["role"] == role_name
    ]
    assert policies == [EBS_CSI_POLICY]

    storage_class = one(of_kind(plan, "StorageClass"))
    assert storage_class["provisioner"] == "ebs.csi.aws.com"
    assert storage_class["parameters"] == {"type": "gp3", "encrypted": "true"}
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"

    release = one(
        r
        for r in plan.of_type("kubernetes:helm.sh/v3:Release")
        if r["inputs"]["name"] == "kube-prometheus-stack"
    )
    spec = release["inputs"]["values"]["prometheus"]["prometheusSpec"]
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == storage_class["metadata"]["name"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"]
    assert spec["retentionSize"]
    assert storage_class["metadata"]["name"] in release["dependsOn"]


# -- migration Job and RDS -------------------------------------------------------------------


def _seconds(duration: str) -> int:
    """A Pulumi custom timeout (Go duration: ``65m``, ``1h5m``, ``3900s``) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert duration, "no timeout"
    assert parts, duration
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


@pytest.mark.parametrize("stack", STACKS)
def test_pulumi_awaits_the_migration_job_until_its_own_deadline(
    plans: dict[str, Plan], stack: str
) -> None:
    job = one(
        r
        for r in plans[stack].of_type("kubernetes:batch/v1:Job")
        if r["inputs"]["metadata"]["name"].startswith("record-migrate-")
    )
    deadline = job["inputs"]["spec"]["activeDeadlineSeconds"]
    timeouts = job.get("customTimeouts", {})
    for operation in ("create", "update"):
        # Past the deadline (the Job's own failure is what Pulumi reports), but not by much.
        assert deadline < _seconds(timeouts.get(operation, "")) <= deadline + 600, timeouts


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_rds_names_the_major_version_only_while_minor_upgrades_are_automatic(
    plans: dict[str, Plan], stack: str
) -> None:
    db = one(plans[stack].of_type("aws:rds/instance:Instance"))["inputs"]
    assert db["autoMinorVersionUpgrade"] is True
    assert db["engineVersion"] == "18"


def test_a_configured_minor_version_declares_its_major() -> None:
    plan = render(
        "staging",
        {"record:database": {"engineVersion": "18.3"}},
    )
    assert one(plan.of_type("aws:rds/instance:Instance"))["inputs"]["engineVersion"] == "18"
    assert engine_version("18.3", auto_minor_upgrade=False) == "18.3"
