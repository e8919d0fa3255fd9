"""What a preview's deploy role may do in its base's provisioning namespace: make its own
database provisioner Job, drop Job and their Secret (``infra/provisioner.py``), and nothing else.

A preview's `pulumi up` runs main's program as the preview IAM role (Kubernetes group
``record:preview-deployers``, ``infra/cluster.py``), which creates these objects in the base's
provisioning namespace, ``record-<base>-db-provisioning`` (:func:`provisioning_namespace`). The
Job runs as ``record-db-provisioner``, whose IRSA role reads the RDS master secret. If the
preview role leaked, a free hand there would be the master password: a Job with a shell command,
a ``postStart`` hook, a ``PYTHONSTARTUP`` variable or a ``DB_HOST`` of the attacker's, which the
bootstrap would send the master password to. So:

- RBAC (a Role in the provisioning namespace) grants the verbs Pulumi's Job await and
  ``infra/preview_db.py``'s kubectl calls use, on Jobs, Secrets and pods;
- an admission policy refuses, for that group and namespace, any Job or Secret but the
  provisioner's own: its names, its image (the digest this base deployed), its ServiceAccount
  and command, its environment with this base's database and region and the ``n`` of its name,
  one container without hooks or probes, emptyDir volumes only, and a Secret holding the login
  passwords alone;
- ``infra/cluster.py``'s policy, which keeps the group to ``record-pr-*``, lets exactly these
  names through in the provisioning namespace (:func:`cluster_exception`), for this policy to
  judge.

RBAC cannot scope ``get`` to a name pattern, and admission never sees a read: the group may read
any Secret, pod and log of the namespace it is granted. That is why the namespace is the
provisioner's alone -- its ServiceAccount, NetworkPolicies and the previews' own Jobs and
Secrets -- and not the base's, whose Secrets hold the cache URL, API keys and database passwords.

The expressions are standard CEL (``has``, ``all``, ``exists``, ``exists_one``, ``matches``,
``startsWith``, map literals) and none of Kubernetes's extension libraries, so the tests
evaluate them with cel-python against rendered and tampered Jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import k8s as kube
from infra.config import ProjectConfig
from infra.db_bootstrap import DROP_FLAG, ENV_DATABASE, ENV_OWNER, ENV_PASSWORDS, ENV_PREVIEW
from infra.pods import RDS_CA_BUNDLE

# record-db-provision-pr-<n> (the Job and its Secret) and record-db-drop-pr-<n> (the drop Job).
PROVISION_PREFIX = "record-db-provision-pr-"
DROP_PREFIX = "record-db-drop-pr-"
NAME_PATTERN = "^record-db-(provision|drop)-pr-[0-9]+$"
SERVICE_ACCOUNT = "record-db-provisioner"
BOOTSTRAP = ["python", "-m", "infra.db_bootstrap"]
# The database a preview's Jobs make or drop: record_pr_<n>, owned by the role of that name.
DATABASE_PREFIX = "record_pr_"
COMPONENT = "db-provisioning"
# What the Role grants. Jobs: Pulumi creates, awaits and replaces the provisioner Job;
# preview_db.py deletes, applies (get, then create or patch), waits for (watch) and reads the drop
# Job. Pods: Pulumi's and kubectl's wait read the Job's pods, `kubectl logs job/...` lists them
# and reads their log. Secrets: Pulumi's create, read, patch and delete of the inputs; no list.
JOB_VERBS = ["create", "get", "list", "watch", "patch", "update", "delete"]
SECRET_VERBS = ["create", "get", "patch", "update", "delete"]
POD_VERBS = ["get", "list", "watch"]
# The base namespace's sibling the provisioner lives in: record-<stack>, with a stack name of 21
# characters at most (infra/config.py), keeps this well under Kubernetes's 63.
NAMESPACE_SUFFIX = "-db-provisioning"


def provisioning_namespace(base_namespace: str) -> str:
    """Where a base's provisioner ServiceAccount lives and its previews' Jobs run."""
    return f"{base_namespace}{NAMESPACE_SUFFIX}"


@dataclass(frozen=True)
class BaseValues:
    """What a provisioner Job of this base must carry: the base stack's own values."""

    namespace: str
    image: str
    db_host: str
    db_port: str
    db_master_secret_arn: str
    region: str


def _cel(value: object) -> str:
    # JSON's string and list syntax is CEL's (double quotes, backslash escapes).
    return json.dumps(value)


def cluster_exception(namespace: str) -> str:
    """CEL, true for a write ``infra/cluster.py``'s policy lets through in the provisioning
    namespace: a provisioner Job or Secret by name, the object itself (no subresource)."""
    return (
        f"request.namespace == {_cel(namespace)} && request.subResource == '' && "
        "((request.resource.group == 'batch' && request.resource.resource == 'jobs') || "
        "(request.resource.group == '' && request.resource.resource == 'secrets')) && "
        f"request.name.matches({_cel(NAME_PATTERN)})"
    )


def _fixed_env(base: BaseValues) -> dict[str, str]:
    return {
        "AWS_REGION": base.region,
        "DB_HOST": base.db_host,
        "DB_PORT": base.db_port,
        "DB_MASTER_SECRET_ARN": base.db_master_secret_arn,
        "PGSSLROOTCERT": RDS_CA_BUNDLE,
    }


def validations(base: BaseValues) -> list[tuple[str, str]]:
    """(expression, message) for each rule of the policy, in order."""
    # Each rule judges one kind on CREATE and UPDATE; `object` is null on DELETE.
    secret = "request.operation == 'DELETE' || request.resource.resource != 'secrets' || "
    job = "request.operation == 'DELETE' || request.resource.resource != 'jobs' || "
    pod = "object.spec.template.spec"
    c = f"{pod}.containers[0]"
    keys = _cel(sorted(ENV_PASSWORDS.values()))
    fixed = _fixed_env(base)
    required = _cel(sorted([*fixed, ENV_DATABASE, ENV_OWNER, ENV_PREVIEW]))
    number = (
        f"{c}.env.exists_one(p, p.name == '{ENV_PREVIEW}') && "
        f"{c}.env.exists(p, p.name == '{ENV_PREVIEW}' && has(p.value) && "
        f"e.value == '{DATABASE_PREFIX}' + p.value)"
    )
    env_rule = (
        f"!has(e.valueFrom) && has(e.value) && (e.name in {_cel(fixed)} "
        f"? e.value == {_cel(fixed)}[e.name] "
        f": e.name == '{ENV_PREVIEW}' ? e.value.matches('^[0-9]+$') && "
        f"(object.metadata.name == '{PROVISION_PREFIX}' + e.value || "
        f"object.metadata.name == '{DROP_PREFIX}' + e.value) "
        f": (e.name == '{ENV_DATABASE}' || e.name == '{ENV_OWNER}') && {number})"
    )
    return [
        (
            f"request.name.matches({_cel(NAME_PATTERN)})",
            f"preview deployers write only {PROVISION_PREFIX}<n> and {DROP_PREFIX}<n> here",
        ),
        (
            secret + "has(object.type) && object.type == 'Opaque' && "
            f"(!has(object.data) || object.data.all(k, k in {keys})) && "
            f"(!has(object.stringData) || object.stringData.all(k, k in {keys}))",
            "a provisioner Secret is Opaque and holds the login passwords alone",
        ),
        (
            job + f"{pod}.serviceAccountName == '{SERVICE_ACCOUNT}' && "
            f"(!has({pod}.serviceAccount) || {pod}.serviceAccount == '{SERVICE_ACCOUNT}') && "
            f"has({pod}.automountServiceAccountToken) && "
            f"{pod}.automountServiceAccountToken == false && "
            f"(!has({pod}.hostNetwork) || !{pod}.hostNetwork) && "
            f"(!has({pod}.hostPID) || !{pod}.hostPID) && "
            f"(!has({pod}.hostIPC) || !{pod}.hostIPC) && "
            # Names resolved elsewhere would send the bootstrap to another DB_HOST (its TLS
            # check, verify-full against the RDS bundle, is the other lock on that door).
            f"!has({pod}.hostAliases) && !has({pod}.dnsConfig)",
            f"a provisioner Job runs as {SERVICE_ACCOUNT}, without an API token, host access or "
            "names of its own",
        ),
        (
            job + f"size({pod}.containers) == 1 && "
            f"(!has({pod}.initContainers) || size({pod}.initContainers) == 0) && "
            f"(!has({pod}.ephemeralContainers) || size({pod}.ephemeralContainers) == 0) && "
            # The API refuses a volume with two sources before admission: emptyDir is all it is.
            f"(!has({pod}.volumes) || {pod}.volumes.all(v, has(v.emptyDir)))",
            "a provisioner Job has one container and emptyDir volumes only",
        ),
        (
            job + f"{c}.image == {_cel(base.image)} && "
            f"({c}.command == {_cel(BOOTSTRAP)} || {c}.command == {_cel([*BOOTSTRAP, DROP_FLAG])})"
            f" && (!has({c}.args) || size({c}.args) == 0) && "
            # A hook or an exec probe would run a command of the request's as the account.
            f"!has({c}.lifecycle) && !has({c}.livenessProbe) && "
            f"!has({c}.readinessProbe) && !has({c}.startupProbe)",
            "a provisioner Job runs the base's API image with python -m infra.db_bootstrap",
        ),
        (
            job + f"has({c}.env) && {c}.env.all(e, {env_rule}) && "
            f"{required}.all(n, {c}.env.exists(e, e.name == n))",
            "a provisioner Job's environment is this base's database and record_pr_<n> of its name",
        ),
        (
            job + f"has({c}.envFrom) && size({c}.envFrom) == 1 && {c}.envFrom.all(f, "
            "has(f.secretRef) && !has(f.configMapRef) && !has(f.prefix) && "
            f"{c}.env.exists(e, e.name == '{ENV_PREVIEW}' && has(e.value) && "
            f"f.secretRef.name == '{PROVISION_PREFIX}' + e.value))",
            f"a provisioner Job reads its own {PROVISION_PREFIX}<n> Secret alone",
        ),
    ]


@dataclass
class ProvisioningAccessArgs:
    project: ProjectConfig
    # The provisioning namespace (provisioning_namespace), never the base's own.
    namespace: str
    # The preview roles' Kubernetes group (infra/cluster.py's PREVIEW_GROUP).
    group: str
    provider: pulumi.ProviderResource
    # The base's own values, which every provisioner Job must carry.
    image: pulumi.Input[str]
    db_host: pulumi.Input[str]
    db_port: pulumi.Input[int]
    db_master_secret_arn: pulumi.Input[str]
    depends_on: list[pulumi.Resource]


class ProvisioningAccess(pulumi.ComponentResource):
    """The preview group's Role in the provisioning namespace, and the policy that narrows it."""

    def __init__(
        self, name: str, args: ProvisioningAccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:ProvisioningAccess", name, None, opts)
        p = args.project
        child = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        object_name = f"record-preview-{COMPONENT}"
        meta = {"name": object_name, "namespace": args.namespace, "labels": kube.labels(p)}
        group = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": args.group}
        role = kube.apply(
            f"{p.prefix}-role-{COMPONENT}",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": [
                    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": JOB_VERBS},
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": SECRET_VERBS},
                    {"apiGroups": [""], "resources": ["pods"], "verbs": POD_VERBS},
                    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                ],
            },
            child,
        )
        kube.apply(
            f"{p.prefix}-rolebinding-{COMPONENT}",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": object_name,
                },
                "subjects": [group],
            },
            pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[role])),
        )
        rules = pulumi.Output.all(
            args.image, args.db_host, args.db_port, args.db_master_secret_arn
        ).apply(
            lambda values: [
                k8s.admissionregistration.v1.ValidationArgs(expression=expression, message=message)
                for expression, message in validations(
                    BaseValues(
                        namespace=args.namespace,
                        image=str(values[0]),
                        db_host=str(values[1]),
                        db_port=str(values[2]),
                        db_master_secret_arn=str(values[3]),
                        region=p.region,
                    )
                )
            ]
        )
        self._policy(p, args, rules, child)
        self.register_outputs({"role": object_name})

    @staticmethod
    def _policy(
        p: ProjectConfig,
        args: ProvisioningAccessArgs,
        rules: pulumi.Output[list[k8s.admissionregistration.v1.ValidationArgs]],
        opts: pulumi.ResourceOptions,
    ) -> None:
        admission = k8s.admissionregistration.v1
        # Cluster-scoped: one per base stack sharing the cluster. Named by the base's prefix, as
        # before the provisioner had a namespace of its own: the move updates it in place.
        policy_name = f"record-preview-{COMPONENT}-{p.prefix}"
        operations = ["CREATE", "UPDATE", "DELETE"]
        vap = admission.ValidatingAdmissionPolicy(
            f"{p.prefix}-vap-{COMPONENT}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, labels=kube.labels(p)),
            spec=admission.ValidatingAdmissionPolicySpecArgs(
                failure_policy="Fail",
                match_constraints=admission.MatchResourcesArgs(
                    namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": args.namespace}
                    ),
                    resource_rules=[
                        admission.NamedRuleWithOperationsArgs(
                            api_groups=["batch"],
                            api_versions=["*"],
                            operations=operations,
                            resources=["jobs"],
                        ),
                        admission.NamedRuleWithOperationsArgs(
                            api_groups=[""],
                            api_versions=["*"],
                            operations=operations,
                            resources=["secrets"],
                        ),
                    ],
                ),
                match_conditions=[
                    admission.MatchConditionArgs(
                        name="preview-deployers",
                        expression=f"{_cel(args.group)} in request.userInfo.groups",
                    )
                ],
                validations=rules,
            ),
            opts=opts,
        )
        admission.ValidatingAdmissionPolicyBinding(
            f"{p.prefix}-vapb-{COMPONENT}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, labels=kube.labels(p)),
            spec=admission.ValidatingAdmissionPolicyBindingSpecArgs(
                policy_name=vap.metadata.name, validation_actions=["Deny"]
            ),
            opts=opts,
        )
