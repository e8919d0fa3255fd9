"""A preview's database comes from main's code, not the PR's (#12, defect 9).

The base stack owns a ServiceAccount whose IRSA role alone (with the base's migration Job's)
may read the RDS master secret, in a namespace of the provisioner's own beside the base's; a
preview's program runs a provisioner Job there, with the base's image, under that
ServiceAccount. Nothing in the preview's
namespace, and none of its IAM roles, may reach the master secret. The provisioner's code
itself runs against real PostgreSQL in ``tests/infra/test_db_bootstrap.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from app.kit.roles import LoginRoles
from infra.cache import derived_password
from infra.plan import ACCOUNT, PLACEHOLDER, Plan, offline_digest
from infra.pods import role_password
from infra.preview import BASE_OUTPUTS
from infra.provisioner import (
    JOB_PREFIX,
    PROVISION_DEADLINE_SECONDS,
    SERVICE_ACCOUNT,
    login_password,
    pod_selector,
)
from tests.infra.conftest import of_kind, one
from tests.infra.test_load_balancer_controller import iam  # noqa: F401 - a fixture

PREVIEW_NAMESPACE = "record-pr-0"
BASE_NAMESPACE = "record-staging"
# What the offline plan's StackReference answers for the base's outputs (infra/plan.py), as the
# staging stack names it: the preview role's Jobs go here, never into BASE_NAMESPACE.
PROVISIONING_NAMESPACE = "record-staging-db-provisioning"
BASE_SERVICE_ACCOUNT = f"{PLACEHOLDER}-base-dbProvisionerServiceAccount"
BASE_IMAGE = (
    f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/{PLACEHOLDER}-base/api"
    f"@{offline_digest(f'{PLACEHOLDER}-base-api')}"
)
MASTER_SECRET = f"{PLACEHOLDER}-base-dbMasterSecretArn"
MASTER_KEY = f"{PLACEHOLDER}-base-dbSecretKmsKeyArn"
WORKLOAD_KINDS = {"Deployment", "Job", "Rollout"}


def provisioner_job(plan: Plan) -> dict[str, Any]:
    return one(
        r
        for r in plan.of_type("kubernetes:batch/v1:Job")
        if r["inputs"]["metadata"]["name"].startswith(JOB_PREFIX)
    )


def migration_job(plan: Plan) -> dict[str, Any]:
    return one(
        r
        for r in plan.of_type("kubernetes:batch/v1:Job")
        if r["inputs"]["metadata"]["name"].startswith("record-migrate-")
    )


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_nothing_in_the_preview_namespace_reaches_the_master_secret(
    plans: dict[str, Plan],
) -> None:
    plan = plans["preview"]
    in_namespace = [
        m for m in plan.manifests if m["metadata"].get("namespace") == PREVIEW_NAMESPACE
    ]
    workloads = [m for m in in_namespace if m["kind"] in WORKLOAD_KINDS]
    assert len(workloads) >= 3
    for manifest in in_namespace:
        text = json.dumps(manifest)
        name = (manifest["kind"], manifest["metadata"]["name"])
        assert MASTER_SECRET not in text, name
        assert "DB_MASTER_SECRET_ARN" not in text, name
        assert BASE_SERVICE_ACCOUNT not in text, name
        assert SERVICE_ACCOUNT not in text, name
    for manifest in workloads:
        pod = manifest["spec"]["template"]["spec"]
        assert "initContainers" not in pod, manifest["metadata"]["name"]
        assert pod["serviceAccountName"].startswith("record-")
    # The preview's migration Job holds the owner's URL, not the other logins' passwords.
    secrets = {m["metadata"]["name"]: m for m in in_namespace if m["kind"] == "Secret"}
    assert set(secrets["record-db-migrate"]["stringData"]) == {"DATABASE_URL"}
    # ... and its ServiceAccount assumes no IAM role at all.
    accounts = {m["metadata"]["name"]: m for m in in_namespace if m["kind"] == "ServiceAccount"}
    assert "annotations" not in accounts["record-migrate"]["metadata"]


def test_the_preview_roles_cannot_read_the_master_secret(plans: dict[str, Plan]) -> None:
    plan = plans["preview"]
    policies = plan.of_type("aws:iam/rolePolicy:RolePolicy")
    assert len(policies) >= 2
    for policy in policies:
        text = policy["inputs"]["policy"]
        assert MASTER_SECRET not in text, policy["name"]
        assert MASTER_KEY not in text, policy["name"]
        assert "secretsmanager:" not in text, policy["name"]
    roles = {r["name"] for r in plan.of_type("aws:iam/role:Role")}
    assert not any(name.endswith(("-migrate", "-db-provisioner")) for name in roles), roles
    # It no longer asks the base for the key at all.
    assert "dbSecretKmsKeyArn" not in BASE_OUTPUTS


def test_the_provisioner_runs_in_the_provisioning_namespace_with_the_base_image(
    plans: dict[str, Plan],
) -> None:
    plan = plans["preview"]
    for key in ("dbProvisionerNamespace", "dbProvisionerServiceAccount", "apiImage"):
        assert key in BASE_OUTPUTS
    # The base's own namespace is no output a preview reads: nothing of it goes there.
    assert "namespace" not in BASE_OUTPUTS
    assert plans["staging"].outputs["dbProvisionerNamespace"] == PROVISIONING_NAMESPACE
    job = provisioner_job(plan)["inputs"]
    assert job["metadata"]["name"] == f"{JOB_PREFIX}pr-0"
    assert job["metadata"]["namespace"] == PROVISIONING_NAMESPACE
    assert not [m for m in plan.manifests if m["metadata"].get("namespace") == BASE_NAMESPACE]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == BASE_SERVICE_ACCOUNT
    container = one(pod["containers"])
    assert container["command"] == ["python", "-m", "infra.db_bootstrap"]
    # The digest the base deployed, not the pull request's build.
    assert container["image"] == BASE_IMAGE
    migrate = one(migration_job(plan)["inputs"]["spec"]["template"]["spec"]["containers"])
    assert migrate["image"] != BASE_IMAGE
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DB_MASTER_SECRET_ARN"] == MASTER_SECRET
    assert env["DB_NAME"] == "record_pr_0"
    assert env["DB_OWNER_USER"] == "record_pr_0"
    # Its passwords come from a Secret beside it, in the provisioning namespace.
    secret_name = one(container["envFrom"])["secretRef"]["name"]
    secret = one(
        m
        for m in of_kind(plan, "Secret")
        if m["metadata"]["name"] == secret_name
        and m["metadata"]["namespace"] == PROVISIONING_NAMESPACE
    )
    assert set(secret["stringData"]) == {
        "DB_OWNER_PASSWORD",
        "DB_API_PASSWORD",
        "DB_WORKER_PASSWORD",
        "DB_KEDA_PASSWORD",
    }
    assert set(secret["stringData"].values()) == {"[secret]"}


def test_the_provisioner_pod_is_hardened_and_awaited(plans: dict[str, Plan]) -> None:
    plan = plans["preview"]
    resource = provisioner_job(plan)
    job = resource["inputs"]
    assert job["spec"]["activeDeadlineSeconds"] == PROVISION_DEADLINE_SECONDS
    assert job["spec"]["backoffLimit"] <= 3
    for operation in ("create", "update"):
        awaited = _seconds(resource["customTimeouts"][operation])
        assert PROVISION_DEADLINE_SECONDS < awaited <= PROVISION_DEADLINE_SECONDS + 600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    migrate_pod = migration_job(plan)["inputs"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == migrate_pod["securityContext"]
    container = one(pod["containers"])
    # The same hardening as every Record container (infra/pods.py).
    assert container["securityContext"] == one(migrate_pod["containers"])["securityContext"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert container["imagePullPolicy"] == "Always"


def test_the_preview_migrates_after_the_provisioner(plans: dict[str, Plan]) -> None:
    plan = plans["preview"]
    provisioner = provisioner_job(plan)
    migration = migration_job(plan)
    assert provisioner["name"] in migration["dependsOn"]
    pod = migration["inputs"]["spec"]["template"]["spec"]
    assert one(pod["containers"])["command"] == ["record", "db", "upgrade"]
    assert "initContainers" not in pod


def test_the_base_owns_the_provisioner_account_and_its_egress(plans: dict[str, Plan]) -> None:
    plan = plans["staging"]
    assert plan.outputs["dbProvisionerServiceAccount"] == SERVICE_ACCOUNT
    assert plan.outputs["namespace"] == BASE_NAMESPACE
    assert plan.outputs["dbProvisionerNamespace"] == PROVISIONING_NAMESPACE
    account = one(
        m for m in of_kind(plan, "ServiceAccount") if m["metadata"]["name"] == SERVICE_ACCOUNT
    )
    assert account["metadata"]["namespace"] == PROVISIONING_NAMESPACE
    assert account["automountServiceAccountToken"] is False
    role_arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role_arn == f"arn:aws:iam::{ACCOUNT}:role/record-staging-db-provisioner"
    role = one(r for r in plan.of_type("aws:iam/role:Role") if r["name"].endswith("-provisioner"))
    trust = json.loads(role["inputs"]["assumeRolePolicy"])
    subjects = [
        value
        for statement in trust["Statement"]
        for key, value in statement["Condition"]["StringEquals"].items()
        if key.endswith(":sub")
    ]
    # The ServiceAccount of that name in the provisioning namespace alone: one of the same name
    # in the base namespace assumes nothing.
    assert subjects == [f"system:serviceaccount:{PROVISIONING_NAMESPACE}:{SERVICE_ACCOUNT}"]
    policies = {
        r["name"]: json.loads(r["inputs"]["policy"])["Statement"]
        for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
    }
    statements = policies["record-staging-db-provisioner"]
    rds = one(plan.of_type("aws:rds/instance:Instance"))["name"]
    master = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret/{PLACEHOLDER}-rds-{rds}"
    # The master secret and its key, nothing else: what the base's migration Job may read.
    assert [s["Action"] for s in statements] == ["secretsmanager:GetSecretValue", "kms:Decrypt"]
    assert statements[0]["Resource"] == master
    assert statements[1]["Resource"].startswith("arn:aws:kms:")
    assert statements == policies["record-staging-migrate"]
    # The namespace denies by default: the provisioner's pods may reach RDS and HTTPS (STS,
    # Secrets Manager), and the policy selects what a preview's Job labels its pods with.
    netpol = one(
        m
        for m in of_kind(plan, "NetworkPolicy")
        if m["metadata"]["name"] == "record-db-provisioner"
    )
    assert netpol["metadata"]["namespace"] == PROVISIONING_NAMESPACE
    spec = netpol["spec"]
    egress = {
        (rule["to"][0]["ipBlock"]["cidr"], rule["ports"][0]["port"]) for rule in spec["egress"]
    }
    assert egress == {("10.30.0.0/16", 5432), ("0.0.0.0/0", 443)}
    assert "ingress" not in spec
    labels = provisioner_job(plans["preview"])["inputs"]["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"] == pod_selector()
    assert pod_selector().items() <= labels.items()


def _in_provisioning_namespace(plan: Plan) -> list[dict[str, Any]]:
    return [m for m in plan.manifests if m["metadata"].get("namespace") == PROVISIONING_NAMESPACE]


def test_the_provisioning_namespace_is_restricted_and_denies_by_default(
    plans: dict[str, Plan],
) -> None:
    plan = plans["staging"]
    namespaces = {m["metadata"]["name"]: m for m in of_kind(plan, "Namespace")}
    labels = namespaces[PROVISIONING_NAMESPACE]["metadata"]["labels"]
    # The base namespace's Pod Security labels, the same three.
    pod_security = {k: v for k, v in labels.items() if k.startswith("pod-security.")}
    base_labels = namespaces[BASE_NAMESPACE]["metadata"]["labels"]
    assert pod_security == {k: v for k, v in base_labels.items() if k.startswith("pod-security.")}
    assert pod_security["pod-security.kubernetes.io/enforce"] == "restricted"
    policies = {
        m["metadata"]["name"]: m["spec"]
        for m in _in_provisioning_namespace(plan)
        if m["kind"] == "NetworkPolicy"
    }
    assert policies["record-default-deny"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    # The bootstrap resolves RDS's, STS's and Secrets Manager's names: DNS to kube-dns alone.
    (dns,) = policies["record-allow-dns"]["egress"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_the_provisioning_namespace_holds_the_provisioner_alone(plans: dict[str, Plan]) -> None:
    """The preview role may read what it may write there (RBAC cannot narrow a ``get`` to a
    name): the base's Secrets must be elsewhere."""
    base = _in_provisioning_namespace(plans["staging"])
    assert {(m["kind"], m["metadata"]["name"]) for m in base} == {
        ("ServiceAccount", SERVICE_ACCOUNT),
        ("NetworkPolicy", "record-db-provisioner"),
        ("NetworkPolicy", "record-default-deny"),
        ("NetworkPolicy", "record-allow-dns"),
    }
    preview = _in_provisioning_namespace(plans["preview"])
    assert {(m["kind"], m["metadata"]["name"]) for m in preview} == {
        ("Job", f"{JOB_PREFIX}pr-0"),
        ("Secret", f"{JOB_PREFIX}pr-0"),
    }
    # ... and nothing of the provisioner is left in the base namespace.
    in_base = [
        (m["kind"], m["metadata"]["name"])
        for m in plans["staging"].manifests
        if m["metadata"].get("namespace") == BASE_NAMESPACE
    ]
    assert not [item for item in in_base if "db-provision" in item[1]], in_base


def test_iam_stores_the_trust_in_the_provisioning_namespace(
    plans: dict[str, Plan],
    iam: Any,  # noqa: F811 - the fixture imported above
) -> None:
    """The trust policy as IAM (moto) takes and keeps it: web identity of the provisioner's
    ServiceAccount in its own namespace, and of no account in the base namespace."""
    role = one(
        r
        for r in plans["staging"].of_type("aws:iam/role:Role")
        if r["name"].endswith("-provisioner")
    )
    iam.create_role(
        RoleName=role["name"], AssumeRolePolicyDocument=role["inputs"]["assumeRolePolicy"]
    )
    stored = iam.get_role(RoleName=role["name"])["Role"]["AssumeRolePolicyDocument"]
    (statement,) = stored["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    conditions = statement["Condition"]["StringEquals"]
    subjects = [value for key, value in conditions.items() if key.endswith(":sub")]
    assert subjects == [f"system:serviceaccount:{PROVISIONING_NAMESPACE}:{SERVICE_ACCOUNT}"]
    assert f"system:serviceaccount:{BASE_NAMESPACE}:" not in json.dumps(stored)


def test_the_move_creates_before_it_deletes(plans: dict[str, Plan]) -> None:
    """The ServiceAccount and its NetworkPolicy keep the resource names they had in the base
    namespace: a new namespace replaces them, and Pulumi makes the new ones (in the namespace,
    once it exists) before it deletes the old, so a provisioner started meanwhile finds its
    account. Only the preview's Job, one name per preview, goes before its successor."""
    plan = plans["staging"]
    namespace = one(
        r
        for r in plan.of_type("kubernetes:core/v1:Namespace")
        if r["inputs"]["metadata"]["name"] == PROVISIONING_NAMESPACE
    )
    moved = [
        r
        for r in plan.resources
        if r["type"].startswith("kubernetes:")
        and r["inputs"].get("metadata", {}).get("namespace") == PROVISIONING_NAMESPACE
    ]
    names = {r["name"] for r in moved}
    assert {"record-staging-sa-db-provisioner", "record-staging-netpol-db-provisioner"} <= names
    for resource in moved:
        assert namespace["name"] in resource["dependsOn"], resource["name"]
        assert not resource.get("deleteBeforeReplace"), resource["name"]
    assert provisioner_job(plans["preview"]).get("deleteBeforeReplace") is True


def test_the_provisioner_sets_the_passwords_the_workloads_log_in_with() -> None:
    roles = LoginRoles("record_pr_7")

    async def passwords(role: str) -> tuple[str, str, str]:
        ours = await login_password("k", role).future()
        theirs = await role_password("k", role).future()
        unlabelled = await derived_password("k", role).future()
        return str(ours), str(theirs), str(unlabelled)

    for role in roles.all:
        ours, theirs, unlabelled = asyncio.run(passwords(role))
        assert ours == theirs, role
        assert ours != unlabelled
