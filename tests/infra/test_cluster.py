"""The cluster a stack builds: how `pulumi up` reaches its API and who may use it, which
Kubernetes version it runs (judged on an injected day, so these tests do not rot), the order
its controllers install in, whether staging holds its previews, and where Prometheus keeps its
data."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.cluster import EKS_CLUSTER_ADMIN, EKS_EDIT, PREVIEW_GROUP
from infra.config import (
    DEFAULT_KUBERNETES_VERSION,
    EKS_KUBERNETES_SUPPORT,
    ClusterConfig,
    ConfigError,
    kubernetes_support,
)
from infra.database import engine_version
from infra.plan import Plan, render
from infra.provisioning_access import cluster_exception
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
                    "clusterSecurityGroupId": "sg-0dev00000000000001",
                    "oidcProviderArn": "arn:aws:iam::111111111111:oidc-provider/x",
                    "oidcIssuer": "https://oidc.example.com",
                    "publicAccessCidrs": STACK_FILE_CIDRS,
                }
            },
        )


def test_the_old_security_group_key_names_its_successor() -> None:
    with pytest.raises(ConfigError, match=re.escape("is now cluster.clusterSecurityGroupId")):
        render("dev", {"record:cluster": {"mode": "existing", "nodeSecurityGroupId": "sg-1"}})


# -- who may use the API (authentication mode API: an access entry or nothing) ----------------

ADMIN_ROLE = "arn:aws:iam::111111111111:role/record-staging-deploy"
PREVIEW_ROLE = "arn:aws:iam::111111111111:role/github/record-preview"
ACCESS = {
    "publicAccessCidrs": STACK_FILE_CIDRS,
    "adminRoleArns": [ADMIN_ROLE],
    "previewRoleArns": [PREVIEW_ROLE],
}
ENTRY = "aws:eks/accessEntry:AccessEntry"
PROVISIONING_BINDING = [("RoleBinding", "record-preview-db-provisioning")]
ASSOCIATION = "aws:eks/accessPolicyAssociation:AccessPolicyAssociation"


@pytest.fixture(scope="module")
def with_access() -> Plan:
    return render("staging", {"record:cluster": ACCESS})


def _access(plan: Plan, principal: str) -> tuple[dict[str, Any], dict[str, Any]]:
    entry = one(e for e in plan.of_type(ENTRY) if e["inputs"]["principalArn"] == principal)
    association = one(
        a for a in plan.of_type(ASSOCIATION) if a["inputs"]["principalArn"] == principal
    )
    return entry, association


def test_api_mode_admits_only_the_creator_and_the_named_roles(with_access: Plan) -> None:
    access = one(with_access.of_type(EKS_CLUSTER))["inputs"]["accessConfig"]
    assert access["authenticationMode"] == "API"
    assert access["bootstrapClusterCreatorAdminPermissions"] is True
    principals = sorted(e["inputs"]["principalArn"] for e in with_access.of_type(ENTRY))
    assert principals == sorted([ADMIN_ROLE, PREVIEW_ROLE])


def test_the_deploy_roles_are_cluster_admins(with_access: Plan) -> None:
    entry, association = _access(with_access, ADMIN_ROLE)
    assert entry["inputs"]["type"] == "STANDARD"
    assert entry["inputs"]["clusterName"] == "record-staging"
    assert not entry["inputs"].get("kubernetesGroups")
    assert association["inputs"]["policyArn"] == EKS_CLUSTER_ADMIN
    assert association["inputs"]["accessScope"] == {"type": "cluster"}
    # The Kubernetes provider (every chart and object) waits for the admins' entries.
    provider = one(with_access.of_type("pulumi:providers:kubernetes"))
    assert association["name"] in provider["dependsOn"]


def test_a_preview_role_edits_the_previews_namespaces_alone(with_access: Plan) -> None:
    entry, association = _access(with_access, PREVIEW_ROLE)
    assert entry["inputs"]["kubernetesGroups"] == [PREVIEW_GROUP]
    assert association["inputs"]["policyArn"] == EKS_EDIT
    scope = association["inputs"]["accessScope"]
    assert scope == {"type": "namespace", "namespaces": ["record-pr-*"]}
    # EKS matches the trailing wildcard as a prefix: previews' namespaces, not the base's.
    namespaces = {m["metadata"]["name"] for m in with_access.manifests if m["kind"] == "Namespace"}
    # The base's own and its provisioner's (infra/provisioner.py), where its Role is its own.
    assert namespaces == {"record-staging", "record-staging-db-provisioning"}
    (pattern,) = scope["namespaces"]
    for base in namespaces:
        assert not base.startswith(pattern.removesuffix("*"))
    assert "record-pr-12".startswith(pattern.removesuffix("*"))


def test_the_preview_group_writes_nowhere_but_the_previews(with_access: Plan) -> None:
    """RBAC gives the group what EKS's edit policy lacks (its namespace, KEDA's objects) but
    cannot name which namespaces it may create; an admission policy refuses every write of the
    group outside record-pr-*, the base namespace included."""
    binding = one(m for m in with_access.manifests if m["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": PREVIEW_GROUP}
    ]
    role = one(m for m in with_access.manifests if m["kind"] == "ClusterRole")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert granted == {
        ("", "namespaces"),
        ("keda.sh", "scaledobjects"),
        ("keda.sh", "triggerauthentications"),
    }
    # No binding anywhere else names the group but the provisioning namespace's Role, which
    # its own admission policy narrows (tests/infra/test_provisioning_access.py).
    assert [
        (m["kind"], m["metadata"]["name"])
        for m in with_access.manifests
        if m["kind"] in {"RoleBinding", "ClusterRoleBinding"}
        and any(subject["name"] == PREVIEW_GROUP for subject in m.get("subjects", []))
    ] == [("ClusterRoleBinding", binding["metadata"]["name"]), *PROVISIONING_BINDING]
    policy = one(
        m
        for m in with_access.manifests
        if m["kind"] == "ValidatingAdmissionPolicy"
        and m["metadata"]["name"] == "record-previews-stay-in-their-namespaces"
    )
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["*"]
    assert set(rule["resources"]) == {"*", "*/*"}
    assert {"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"])
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == f"'{PREVIEW_GROUP}' in request.userInfo.groups"
    (validation,) = spec["validations"]
    assert validation["expression"] == (
        "(request.resource.resource == 'namespaces' && request.resource.group == '' "
        "? request.name.startsWith('record-pr-') : request.namespace.startsWith('record-pr-')) "
        # The exception names the provisioner's namespace, never the base's own.
        f"|| ({cluster_exception('record-staging-db-provisioning')})"
    )
    vap_binding = one(
        m
        for m in with_access.manifests
        if m["kind"] == "ValidatingAdmissionPolicyBinding"
        and m["spec"]["policyName"] == policy["metadata"]["name"]
    )
    assert vap_binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_the_preview_access_objects_match_the_kubernetes_schemas(
    with_access: Plan, tools_bin: Path, tmp_path: Path
) -> None:
    """No stack file names a preview role, so the validators' run over every stack never sees
    these objects: checked here, strictly (an unknown field is an error)."""
    kinds = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    files = []
    for manifest in with_access.manifests:
        # The provisioning namespace's objects: tests/infra/test_provisioning_access.py.
        if manifest["kind"] in kinds and "db-provisioning" not in manifest["metadata"]["name"]:
            path = tmp_path / f"{manifest['kind']}.yaml"
            path.write_text(yaml.safe_dump(manifest))
            files.append(path)
    assert len(files) == len(kinds)
    version = f"{DEFAULT_KUBERNETES_VERSION}.0"
    result = subprocess.run(
        [str(tools_bin / "kubernetes-validate"), "--strict", "-k", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed for " in line]
    assert len(passed) == len(kinds), lines


def test_no_preview_rbac_without_preview_roles(plans: dict[str, Plan]) -> None:
    kinds = {m["kind"] for m in plans["staging"].manifests}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy"}


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"adminRoleArns": ["record-staging-deploy"]}, "not an IAM role ARN"),
        ({"adminRoleArns": ["arn:aws:iam::111111111111:user/ci"]}, "not an IAM role ARN"),
        (
            {"adminRoleArns": ["arn:aws:sts::111111111111:assumed-role/deploy/ci"]},
            "not an IAM role ARN",
        ),
        ({"adminRoleArns": ["arn:aws:iam::1111:role/deploy"]}, "not an IAM role ARN"),
        ({"previewRoleArns": ["arn:aws:iam::111111111111:role/*"]}, "not an IAM role ARN"),
        ({"adminRoleArns": ADMIN_ROLE}, "adminRoleArns must be a list"),
        ({"adminRoleArns": [ADMIN_ROLE, ADMIN_ROLE]}, "names a role twice"),
        (
            {"adminRoleArns": [ADMIN_ROLE], "previewRoleArns": [ADMIN_ROLE]},
            "adminRoleArns and previewRoleArns both name",
        ),
    ],
)
def test_access_roles_are_iam_role_arns(cluster: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        render("staging", {"record:cluster": {"publicAccessCidrs": STACK_FILE_CIDRS, **cluster}})


def test_an_existing_cluster_grants_its_own_access() -> None:
    with pytest.raises(ConfigError, match="adminRoleArns and previewRoleArns are for mode 'eks'"):
        render("dev", {"record:cluster": {**_dev_cluster(), "adminRoleArns": [ADMIN_ROLE]}})


def _dev_cluster() -> dict[str, Any]:
    return {
        "mode": "existing",
        "vpcId": "vpc-0dev00000000000001",
        "vpcCidr": "10.20.0.0/16",
        "privateSubnetIds": ["subnet-0dev0000000000001"],
        "clusterSecurityGroupId": "sg-0dev00000000000001",
        "oidcProviderArn": "arn:aws:iam::111111111111:oidc-provider/x",
        "oidcIssuer": "https://oidc.example.com",
    }


# -- add-ons and controllers -----------------------------------------------------------------


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_vpc_cni_takes_over_the_aws_node_eks_installed(plans: dict[str, Plan], stack: str) -> None:
    addon = one(
        a
        for a in plans[stack].of_type("aws:eks/addon:Addon")
        if a["inputs"]["addonName"] == "vpc-cni"
    )["inputs"]
    # EKS creates aws-node with the cluster; our configuration values conflict with it.
    assert addon["resolveConflictsOnCreate"] == "OVERWRITE"
    assert addon["resolveConflictsOnUpdate"] == "OVERWRITE"


def _releases(plan: Plan) -> dict[str, dict[str, Any]]:
    return {r["inputs"]["name"]: r for r in plan.of_type("kubernetes:helm.sh/v3:Release")}


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_charts_install_after_the_load_balancer_controller_is_ready(
    plans: dict[str, Plan], stack: str
) -> None:
    """The controller's webhooks admit other charts' objects (its Service webhook: every
    Service, failurePolicy Fail): installed alongside it, they failed with "no endpoints
    available for service aws-load-balancer-webhook-service"."""
    releases = _releases(plans[stack])
    lbc = releases.pop("aws-load-balancer-controller")
    assert lbc["inputs"]["atomic"] is True  # Helm waits for its pods before it is done
    assert not lbc["inputs"].get("skipAwait")
    assert lbc["inputs"]["values"]["enableServiceMutatorWebhook"] is False
    assert {"metrics-server", "keda", "argo-rollouts", "kube-prometheus-stack"} <= set(releases)
    for name, release in releases.items():
        assert lbc["name"] in release["dependsOn"], name


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_keda_runs_as_non_root_in_every_component(plans: dict[str, Plan], stack: str) -> None:
    # The chart (2.17.2) reads podSecurityContext per component; a top-level key is ignored.
    values = _releases(plans[stack])["keda"]["inputs"]["values"]
    assert values["podSecurityContext"] == {
        "operator": {"runAsNonRoot": True},
        "metricServer": {"runAsNonRoot": True},
        "webhooks": {"runAsNonRoot": True},
    }


# -- capacity: staging holds its base stack and two previews ----------------------------------

# What the kubelet leaves to pods on an EKS AL2023 t3.large (2 vCPU, 8 GiB, 35 pods), by the
# AMI's own reservation formula: CPU 6% of the first core + 1% of the second (70m);
# memory 11 MiB x 35 pods + 255 MiB kube-reserved, 100 MiB hard eviction, of the ≈ 7.7 GiB the
# instance reports.
ALLOCATABLE = {"t3.large": (1930, 6950)}  # (millicores, MiB)
# Requests of the DaemonSets on every node: aws-node 25m (vpc-cni), kube-proxy 100m,
# ebs-csi-node 3 x 10m / 40 Mi.
PER_NODE = (155, 120)
# Requests of the controllers, once per cluster: CoreDNS 2 x 100m / 70 Mi, EBS CSI controller
# 2 x 6 x 10m / 40 Mi, metrics-server 100m / 200 Mi, KEDA 3 x 100m / 100 Mi (its chart's
# defaults), plus an allowance for what requests nothing but runs anyway (Prometheus,
# Grafana, Alertmanager, the operators, the load-balancer controller, Argo Rollouts).
CONTROLLERS = (200 + 120 + 100 + 300 + 500, 140 + 480 + 200 + 300 + 2048)
PREVIEWS = 2


def _quantity(value: str, unit: str) -> int:
    """A Kubernetes quantity in millicores (unit 'm') or MiB (unit 'Mi')."""
    if unit == "m":
        return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)
    for suffix, mib in {"Gi": 1024, "Mi": 1, "Ki": 1 / 1024}.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * mib)
    return int(value) // (1024 * 1024)


def _pod_requests(spec: dict[str, Any]) -> tuple[int, int]:
    def total(containers: list[dict[str, Any]], unit: str, key: str) -> list[int]:
        return [_quantity(c["resources"]["requests"][key], unit) for c in containers]

    containers, inits = spec["containers"], spec.get("initContainers", [])
    # Init containers run one at a time before the others: the pod needs the larger.
    cpu = max([sum(total(containers, "m", "cpu")), *total(inits, "m", "cpu")])
    memory = max([sum(total(containers, "Mi", "memory")), *total(inits, "Mi", "memory")])
    return cpu, memory


def _requested(plan: Plan) -> tuple[int, int]:
    """Every pod the stack keeps running at its minimum, with one busy worker (KEDA's minimum
    is 0) and its deploy's Jobs."""
    minimum = {
        m["spec"]["scaleTargetRef"]["name"]: m["spec"]["minReplicas"]
        for m in of_kind(plan, "HorizontalPodAutoscaler")
    }
    minimum |= {m["spec"]["scaleTargetRef"]["name"]: 1 for m in of_kind(plan, "ScaledObject")}
    cpu = memory = 0
    for manifest in plan.manifests:
        if manifest["kind"] not in {"Deployment", "Rollout", "Job"}:
            continue
        name = manifest["metadata"]["name"]
        replicas = minimum.get(name, manifest["spec"].get("replicas", 1))
        pod_cpu, pod_memory = _pod_requests(manifest["spec"]["template"]["spec"])
        cpu, memory = cpu + replicas * pod_cpu, memory + replicas * pod_memory
    return cpu, memory


def test_staging_holds_its_base_and_two_previews(plans: dict[str, Plan]) -> None:
    group = one(plans["staging"].of_type("aws:eks/nodeGroup:NodeGroup"))["inputs"]
    (instance_type,) = group["instanceTypes"]
    nodes = group["scalingConfig"]["desiredSize"]
    node_cpu, node_memory = (
        a - d for a, d in zip(ALLOCATABLE[instance_type], PER_NODE, strict=True)
    )
    base_cpu, base_memory = _requested(plans["staging"])
    preview_cpu, preview_memory = _requested(plans["preview"])
    cpu = base_cpu + PREVIEWS * preview_cpu + CONTROLLERS[0]
    memory = base_memory + PREVIEWS * preview_memory + CONTROLLERS[1]
    assert cpu <= nodes * node_cpu, (cpu, nodes, node_cpu)
    assert memory <= nodes * node_memory, (memory, nodes, node_memory)
    # Each pod fits on one node (the model server's whole vCPU included).
    for manifest in [*plans["staging"].manifests, *plans["preview"].manifests]:
        if manifest["kind"] in {"Deployment", "Rollout", "Job"}:
            pod_cpu, pod_memory = _pod_requests(manifest["spec"]["template"]["spec"])
            assert pod_cpu <= node_cpu, manifest["metadata"]["name"]
            assert pod_memory <= node_memory, manifest["metadata"]["name"]
    # The two nodes staging had could not hold one preview beside its base.
    assert base_cpu + preview_cpu + CONTROLLERS[0] > 2 * node_cpu


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
