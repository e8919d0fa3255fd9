"""The database provisioner: a preview's database and roles, made by main's code, not the PR's.

Creating a database and its login roles takes the RDS master's credentials. Pods of a preview
run pull-request code, so they must never hold those (#12, defect 9). The base stack owns a
namespace of the provisioner's own, ``record-<base>-db-provisioning``, holding the ServiceAccount
``record-db-provisioner``, whose IRSA role alone may read the master secret
(``infra/identity.py``), and NetworkPolicies that deny by default and let its pods reach DNS,
RDS, STS and Secrets Manager (:class:`DbProvisioner`). Not the base namespace: the preview role
that creates the Jobs may read Secrets and logs where it may write them (RBAC cannot narrow a
``get`` to a name, ``infra/provisioning_access.py``), and the base's Secrets are no preview's
business. A preview stack's Pulumi program (main's, run by the
preview workflow from the default branch's checkout: the pull request contributes only its
images) creates there a Secret with its login passwords and a Job that runs the base's own API
image -- the digest the base deployed, code from main -- with ``python -m infra.db_bootstrap``
under that ServiceAccount (:class:`PreviewDatabase`). The preview's own migration Job waits for
it and then only runs ``alembic upgrade head`` as the preview's owner. Both Jobs run the
bootstrap in preview mode (``DB_PREVIEW_NUMBER``): it refuses any database or owner but
``record_pr_<n>``.

The base's own database is still bootstrapped by its migration Job's init container: that Job
runs the base's code under the base's role, so it crosses no trust boundary.

Destroying a preview drops its database and roles through a resource of the preview's own stack,
``<prefix>-database`` (a ``pulumi-command`` local Command, :class:`PreviewDatabase`): its delete
runs ``infra/preview_db.py`` on the deploy machine, which runs the same Job with ``--drop`` and
waits for it. It depends on the provisioner Job, so it goes before the Job's Secret does, and the
preview's workloads wait for it, so they go before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from app.kit.roles import LoginRoles
from infra import k8s as kube
from infra import preview_db
from infra.cache import derived_password
from infra.config import ProjectConfig
from infra.db_bootstrap import DROP_FLAG, ENV_DATABASE, ENV_OWNER, ENV_PASSWORDS, ENV_PREVIEW
from infra.hardening import container_security, pod_security
from infra.pods import RDS_CA_BUNDLE, SECRETS_AS_ENV_SKIP
from infra.provisioning_access import (
    ProvisioningAccess,
    ProvisioningAccessArgs,
    provisioning_namespace,
)

SERVICE_ACCOUNT = "record-db-provisioner"
COMPONENT = "db-provisioner"
# A preview's Job and its inputs' Secret in the provisioning namespace: record-db-provision-pr-<n>.
JOB_PREFIX = "record-db-provision-"
# The one-off Job that drops it when the preview is destroyed: record-db-drop-pr-<n>.
DROP_JOB_PREFIX = "record-db-drop-"
# Creating four roles and an empty database takes seconds; a Job still running after this long
# is stuck (RDS unreachable, a lock held by a running migration), and Pulumi, which awaits it a
# little longer, then reports the Job's own DeadlineExceeded.
PROVISION_DEADLINE_SECONDS = 600
PROVISION_AWAIT_MARGIN_SECONDS = 120


def login_password(secret: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    """A login role's password, as the stack's workloads derive it from ``dbAppPassword``
    (``infra.pods.role_password``; a test checks the two agree)."""
    return derived_password(secret, f"record-db-login:{role}")


def pod_selector() -> dict[str, str]:
    """What the base's NetworkPolicy selects: a provisioner pod of any preview (each carries its
    own instance label), in the provisioning namespace only."""
    return {"app.kubernetes.io/name": "record", "app.kubernetes.io/component": COMPONENT}


@dataclass
class DbProvisionerArgs:
    project: ProjectConfig
    # The base's own namespace: the provisioner's is named after it (provisioning_namespace).
    namespace: str
    provider: pulumi.ProviderResource
    # The IRSA role that may read the master secret (Identity.provisioner_role).
    role_arn: pulumi.Input[str]
    vpc_cidr: pulumi.Input[str]
    # The cluster's controllers and the base's workloads come first.
    depends_on: list[pulumi.Resource]
    # The preview roles' Kubernetes group, when the cluster has preview roles: it may then make
    # previews' provisioner Jobs here, and only those (infra/provisioning_access.py), which must
    # carry this base's image and database.
    preview_group: str | None = None
    api_image: pulumi.Input[str] | None = None
    db_host: pulumi.Input[str] | None = None
    db_port: pulumi.Input[int] | None = None
    db_master_secret_arn: pulumi.Input[str] | None = None


class DbProvisioner(pulumi.ComponentResource):
    """Base side: the provisioner's namespace, the ServiceAccount previews' provisioner Jobs run
    as there, and their egress."""

    namespace: str
    service_account: str

    def __init__(
        self, name: str, args: DbProvisionerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:DbProvisioner", name, None, opts)
        p = args.project
        self.namespace = provisioning_namespace(args.namespace)
        self.service_account = SERVICE_ACCOUNT
        child = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        namespace = self._namespace(p, child)
        # Everything else lives in the namespace. The ServiceAccount and NetworkPolicy keep their
        # resource names from when they lived in the base namespace: a new namespace makes them
        # new objects, which Pulumi creates before it deletes the old ones (no name is shared).
        in_namespace = pulumi.ResourceOptions.merge(
            child, pulumi.ResourceOptions(depends_on=[*args.depends_on, namespace])
        )
        meta = {"namespace": self.namespace, "labels": kube.labels(p, COMPONENT)}
        kube.apply(
            f"{p.prefix}-sa-{COMPONENT}",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    **meta,
                    "name": SERVICE_ACCOUNT,
                    "annotations": {"eks.amazonaws.com/role-arn": args.role_arn},
                },
                "automountServiceAccountToken": False,
            },
            in_namespace,
        )
        self._network_policies(p, meta, args.vpc_cidr, in_namespace)
        if args.preview_group is not None:
            assert args.api_image is not None
            assert args.db_host is not None
            assert args.db_port is not None
            assert args.db_master_secret_arn is not None
            ProvisioningAccess(
                name,
                ProvisioningAccessArgs(
                    project=p,
                    namespace=self.namespace,
                    group=args.preview_group,
                    provider=args.provider,
                    image=args.api_image,
                    db_host=args.db_host,
                    db_port=args.db_port,
                    db_master_secret_arn=args.db_master_secret_arn,
                    depends_on=[*args.depends_on, namespace],
                ),
                pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"namespace": self.namespace, "service_account": SERVICE_ACCOUNT})

    def _namespace(self, p: ProjectConfig, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
        # The base namespace's Pod Security labels (infra/workloads.py): the Jobs are restricted.
        return kube.apply(
            f"{p.prefix}-namespace-{COMPONENT}",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": self.namespace,
                    "labels": {
                        **kube.labels(p, COMPONENT),
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/audit": "restricted",
                        "pod-security.kubernetes.io/warn": "restricted",
                    },
                },
            },
            opts,
        )

    @staticmethod
    def _network_policies(
        p: ProjectConfig,
        meta: dict[str, Any],
        vpc_cidr: pulumi.Input[str],
        opts: pulumi.ResourceOptions,
    ) -> None:
        """Deny by default, as in the base namespace; the provisioner's pods resolve names and
        reach RDS in the VPC, STS (IRSA) and Secrets Manager over HTTPS. No ingress."""
        tcp = [{"protocol": "TCP", "port": 5432}]
        dns = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
        policies: dict[str, tuple[str, dict[str, Any]]] = {
            # The name the base namespace's own policy had: the resource keeps its URN.
            COMPONENT: (
                f"record-{COMPONENT}",
                {
                    "podSelector": {"matchLabels": pod_selector()},
                    "policyTypes": ["Ingress", "Egress"],
                    "egress": [
                        {"to": [{"ipBlock": {"cidr": vpc_cidr}}], "ports": tcp},
                        {
                            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                            "ports": [{"protocol": "TCP", "port": 443}],
                        },
                    ],
                },
            ),
            f"{COMPONENT}-default-deny": (
                "record-default-deny",
                {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            ),
            f"{COMPONENT}-allow-dns": (
                "record-allow-dns",
                {
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {
                            "to": [dns],
                            "ports": [
                                {"protocol": "UDP", "port": 53},
                                {"protocol": "TCP", "port": 53},
                            ],
                        }
                    ],
                },
            ),
        }
        for resource, (object_name, spec) in policies.items():
            kube.apply(
                f"{p.prefix}-netpol-{resource}",
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {**meta, "name": object_name},
                    "spec": spec,
                },
                opts,
            )


@dataclass
class PreviewDatabaseArgs:
    project: ProjectConfig
    # Names the Job and its Secret (pr-<n>).
    slug: str
    database: str
    owner: str
    # The preview's Pulumi secret its login passwords derive from (dbAppPassword).
    secret: pulumi.Input[str]
    # From the base stack's outputs: its provisioning namespace (dbProvisionerNamespace), where
    # the Job and its Secret go.
    namespace: pulumi.Input[str]
    service_account: pulumi.Input[str]
    base_image: pulumi.Input[str]
    db_host: pulumi.Input[str]
    db_port: pulumi.Input[int]
    db_master_secret_arn: pulumi.Input[str]
    # The preview's provider: the base cluster's kubeconfig, from the deploy workflow.
    provider: pulumi.ProviderResource
    # The same kubeconfig, for kubectl when the preview is destroyed (infra/preview_db.py).
    kubeconfig: pulumi.Input[str]
    # The base stack's name: the drop reads the image the base runs then (infra/preview_db.py).
    base_stack: str = ""


class PreviewDatabase(pulumi.ComponentResource):
    """Preview side: the provisioner Job in the base's provisioning namespace, the Secret it
    reads, and the database as a resource of the preview's stack, whose delete drops it."""

    job: pulumi.CustomResource
    # What the preview's workloads wait for: it exists once the database does, and goes after
    # them on destroy (dropping the database under a running API would only make noise).
    resource: command.local.Command

    def __init__(
        self, name: str, args: PreviewDatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:PreviewDatabase", name, None, opts)
        p = args.project
        roles = LoginRoles(args.owner)
        passwords = {role: login_password(args.secret, role) for role in roles.all}
        kinds = dict(zip(("owner", "api", "worker", "keda"), roles.all, strict=True))
        object_name = f"{JOB_PREFIX}{args.slug}"
        meta = {
            "name": object_name,
            "namespace": args.namespace,
            "labels": kube.labels(p, COMPONENT),
        }
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        inputs = kube.apply(
            f"{p.prefix}-db-provision-inputs",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta,
                "type": "Opaque",
                # The passwords only: the names are no secret, and stay readable in the Job.
                "stringData": {
                    ENV_PASSWORDS[kind]: passwords[role] for kind, role in kinds.items()
                },
            },
            child,
        )
        # The Job reads the Secret at start only, and a Job's template cannot change: new
        # passwords (dbAppPassword rotated) change this fingerprint, so the Job is replaced and
        # runs again. 48 bits of SHA-256 of HMAC outputs say nothing about them.
        fingerprint = pulumi.Output.unsecret(
            pulumi.Output.all(*passwords.values()).apply(
                lambda values: hashlib.sha256("\n".join(values).encode()).hexdigest()[:12]
            )
        )
        await_seconds = f"{PROVISION_DEADLINE_SECONDS + PROVISION_AWAIT_MARGIN_SECONDS}s"
        self.job = kube.apply(
            f"{p.prefix}-db-provision",
            self._job(args, meta, object_name, fingerprint),
            pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    depends_on=[inputs],
                    # One name per preview: the finished Job goes before its successor comes.
                    delete_before_replace=True,
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=await_seconds, update=await_seconds
                    ),
                ),
            ),
        )
        drop_job = self._job(
            args, {**meta, "name": f"{DROP_JOB_PREFIX}{args.slug}"}, object_name, drop=True
        )
        self.resource = command.local.Command(
            f"{p.prefix}-database",
            command.local.CommandArgs(
                # Create and update only check that the delete will run (its Job's manifest, the
                # module, kubectl): a preview that could not drop its database fails at `up`.
                create=preview_db.command_line("check"),
                update=preview_db.command_line("check"),
                delete=preview_db.command_line("drop"),
                environment={
                    preview_db.ENV_JOB: pulumi.Output.from_input(drop_job).apply(
                        lambda job: json.dumps(job, sort_keys=True)
                    ),
                    preview_db.ENV_KUBECONFIG: pulumi.Output.secret(args.kubeconfig),
                    preview_db.ENV_BASE_STACK: args.base_stack,
                },
                # pulumi-command replaces a Command without `update` when a trigger changes, and a
                # replacement runs the delete: the database dropped under a live preview. With
                # `update` every change is an update; the triggers are its identity alone, which
                # a stack never changes.
                triggers=[args.database, args.owner],
            ),
            pulumi.ResourceOptions(parent=self, depends_on=[self.job]),
        )
        self.register_outputs({"job": object_name})

    @staticmethod
    def _job(
        args: PreviewDatabaseArgs,
        meta: dict[str, Any],
        secret_name: str,
        fingerprint: pulumi.Output[str] | None = None,
        *,
        drop: bool = False,
    ) -> dict[str, Any]:
        """The provisioner Job, or (``drop``) the one that drops what it made: the same image,
        account, hardening and inputs."""
        container = {
            "name": COMPONENT,
            "image": args.base_image,
            "imagePullPolicy": "Always",
            "command": ["python", "-m", "infra.db_bootstrap", *([DROP_FLAG] if drop else [])],
            "env": [
                {"name": "AWS_REGION", "value": args.project.region},
                {"name": "DB_HOST", "value": args.db_host},
                {"name": "DB_PORT", "value": pulumi.Output.from_input(args.db_port).apply(str)},
                {"name": "DB_MASTER_SECRET_ARN", "value": args.db_master_secret_arn},
                {"name": "PGSSLROOTCERT", "value": RDS_CA_BUNDLE},
                {"name": ENV_DATABASE, "value": args.database},
                {"name": ENV_OWNER, "value": args.owner},
                # Preview mode: the bootstrap refuses any name but record_pr_<n> (the slug's n).
                {"name": ENV_PREVIEW, "value": args.slug.removeprefix("pr-")},
            ],
            "envFrom": [{"secretRef": {"name": secret_name}}],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "securityContext": container_security(),
            # An emptyDir of the pod's own, not the node's /tmp (the root is read-only).
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {**meta, "annotations": {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}},
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": PROVISION_DEADLINE_SECONDS,
                # No ttlSecondsAfterFinished: Pulumi owns the Job, and one garbage-collected
                # behind its back would be recreated (and re-run) by the next refresh. The
                # preview's `pulumi destroy` deletes it.
                "template": {
                    "metadata": {
                        "labels": meta["labels"],
                        "annotations": {
                            "checkov.io/skip1": SECRETS_AS_ENV_SKIP,
                            **(
                                {"record.dev/db-inputs": fingerprint}
                                if fingerprint is not None
                                else {}
                            ),
                        },
                    },
                    "spec": {
                        "serviceAccountName": args.service_account,
                        # IRSA projects its own token; the Kubernetes API token is never needed.
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "restartPolicy": "Never",
                        "securityContext": pod_security(),
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                    },
                },
            },
        }
