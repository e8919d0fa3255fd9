"""Preview: one pull request's deployment on the shared base stack (staging by default).

A preview owns only what is cheap and disposable: a namespace, a database on the base stack's
RDS instance, IRSA roles scoped to its own prefix in the base bucket, a Valkey user of its own
in the base's user group, allowed only keys under its ``REDIS_KEY_PREFIX`` (``pr-<n>:``), and
its workloads. Cluster, RDS, Valkey, the bucket and the SES identity with its SMTP credentials
are read from the base stack's outputs (a StackReference), never created; the base's Valkey
password is not among them.

Its pods run the pull request's code, so nothing in its namespace may read the RDS master
secret: its database and login roles come from a provisioner Job that this program creates in
the base's provisioning namespace (``record-<base>-db-provisioning``, not the base namespace),
running the base's own image (main's code) under the base's ``record-db-provisioner``
ServiceAccount (``infra/provisioner.py``). Its IRSA roles have no
access to the master secret or its key, and its migration Job only runs the migrations, as the
preview's owner role, once the provisioner is done.

``pulumi destroy`` deletes every resource of the stack (none is protected or retained), the
Valkey user among them; the database is one too, ``<prefix>-database``, whose delete drops it and
its roles through the same Job with ``--drop`` (``infra/preview_db.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.cache import derived_password, preview_access
from infra.common import tags
from infra.config import PreviewConfig, ProjectConfig

# The outputs a base stack exports for its previews (infra/stack.py).
BASE_OUTPUTS = (
    "kubeconfig",
    "vpcCidr",
    "dbAddress",
    "dbPort",
    # Only named to the provisioner Job, which reads it with the base's role.
    "dbMasterSecretArn",
    "cacheEndpoint",
    "cacheUserGroupId",
    "bucketName",
    "bucketArn",
    "bucketKmsKeyArn",
    "oidcProviderArn",
    "oidcIssuer",
    "mailFrom",
    "smtpHost",
    "smtpUsername",
    "smtpPassword",
    # infra/images.py: a preview pushes its builds into the base stack's repositories.
    "apiRepositoryUrl",
    "modelsRepositoryUrl",
    # infra/provisioner.py: where a preview's database provisioner runs, as whom, and with
    # which image (the digest the base deployed, not the pull request's build).
    "dbProvisionerNamespace",
    "dbProvisionerServiceAccount",
    "apiImage",
    # infra/api.py: the ALB group a preview's Ingress joins, and the wildcard certificate for
    # *.<previews.domain> it brings (the base's record:previews).
    "ingressGroup",
    "previewCertificateArn",
)


def renamed_from(project: ProjectConfig) -> pulumi.ResourceTransformation | None:
    """Aliases to a preview's resource names of before, ``record-preview-pr-<n>-pr-<n>-…``,
    for the preview and everything under it (a transformation reaches all its children, the
    components of other modules included).

    A preview is disposable, and most of what the rename touches is replaced at the next `up`
    anyway (an IAM role's or a Valkey user's name is its identity). The aliases are for what
    must not be: the Kubernetes provider (a new one would replace every object of the
    preview) and its database, whose replacement would create the new resource, a no-op on the
    database that exists, and then delete the old one, which drops ``record_pr_<n>``."""
    old, new = project.former_prefix, project.prefix
    if old is None:
        return None

    def rename(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult:
        if not args.name.startswith(new):
            return pulumi.ResourceTransformationResult(args.props, args.opts)
        former = old + args.name[len(new) :]
        # Each alias the resource has already (a parent it moved from) under the old name too:
        # a preview made before both the move and the rename is known by the pair.
        # (merge appends these to the aliases it has.)
        added: list[pulumi.Input[str] | pulumi.Alias] = [pulumi.Alias(name=former)]
        for existing in args.opts.aliases or []:
            # An alias's unset fields are ``...``: this one kept the name it had.
            if isinstance(existing, pulumi.Alias) and _unset(existing.name):
                added.append(_renamed(existing, former))
        return pulumi.ResourceTransformationResult(
            args.props,
            pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(aliases=added)),
        )

    return rename


def _unset(value: object) -> bool:
    return value is ...


def _renamed(alias: pulumi.Alias, name: str) -> pulumi.Alias:
    return pulumi.Alias(
        name=name,
        type_=alias.type_,
        parent=alias.parent,
        stack=alias.stack,
        project=alias.project,
    )


@dataclass
class PreviewArgs:
    project: ProjectConfig
    preview: PreviewConfig
    # The preview's own secret (dbAppPassword) its Valkey password is derived from.
    secret: pulumi.Input[str]


class Preview(pulumi.ComponentResource):
    provider: k8s.Provider
    outputs: dict[str, pulumi.Output[object]]
    namespace: str
    database: str
    # The owner role its migrations run as; its other logins are named after it.
    db_owner: str
    object_prefix: str
    # Its Valkey user: only keys under cache_key_prefix, with a password of its own.
    cache_user: str
    cache_key_prefix: str
    cache_password: pulumi.Output[str]

    def __init__(
        self, name: str, args: PreviewArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        renamed = renamed_from(args.project)
        if renamed is not None:
            opts = pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(transformations=[renamed])
            )
        super().__init__("record:infra:Preview", name, None, opts)
        pv = args.preview
        base = pulumi.StackReference(pv.base_stack, opts=pulumi.ResourceOptions(parent=self))
        self.outputs = {key: base.require_output(key) for key in BASE_OUTPUTS}
        self.namespace = f"record-{pv.slug}"
        self.database = f"record_pr_{pv.pr_number}"
        self.db_owner = self.database
        self.object_prefix = f"previews/{pv.slug}/"
        self.cache_user = pv.slug
        self.cache_key_prefix = f"{pv.slug}:"
        self.cache_password = derived_password(args.secret, f"record-valkey:{self.cache_user}")
        prefix = args.project.prefix
        user = aws.elasticache.User(
            f"{prefix}-valkey",
            user_id=prefix,
            user_name=self.cache_user,
            engine="valkey",
            access_string=preview_access(self.cache_key_prefix),
            passwords=[self.cache_password],
            tags=tags(args.project, prefix),
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.elasticache.UserGroupAssociation(
            f"{prefix}-valkey",
            user_group_id=self.outputs["cacheUserGroupId"].apply(str),
            user_id=user.user_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.provider = k8s.Provider(
            f"{args.project.prefix}-k8s",
            kubeconfig=self.outputs["kubeconfig"].apply(str),
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"namespace": self.namespace, "database": self.database})
