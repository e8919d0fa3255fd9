"""Preview: one pull request's deployment on the shared base stack (staging by default).

A preview owns only what is cheap and disposable: a namespace, a database on the base stack's
RDS instance (created by the migration Job's bootstrap step), IRSA roles scoped to its own
prefix in the base bucket, and its workloads. Cluster, RDS, Valkey, the bucket and the SES
identity with its SMTP credentials are read from the base stack's outputs (a StackReference),
never created.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import PreviewConfig, ProjectConfig

# The outputs a base stack exports for its previews (infra/stack.py).
BASE_OUTPUTS = (
    "kubeconfig",
    "vpcCidr",
    "dbAddress",
    "dbPort",
    "dbMasterSecretArn",
    "dbSecretKmsKeyArn",
    "cacheEndpoint",
    "cacheAuthToken",
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
)


@dataclass
class PreviewArgs:
    project: ProjectConfig
    preview: PreviewConfig


class Preview(pulumi.ComponentResource):
    provider: k8s.Provider
    outputs: dict[str, pulumi.Output[object]]
    namespace: str
    database: str
    object_prefix: str
    # Valkey has 16 logical databases; previews share the base's instance, one each.
    cache_db: int

    def __init__(
        self, name: str, args: PreviewArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Preview", name, None, opts)
        pv = args.preview
        base = pulumi.StackReference(pv.base_stack, opts=pulumi.ResourceOptions(parent=self))
        self.outputs = {key: base.require_output(key) for key in BASE_OUTPUTS}
        self.namespace = f"record-{pv.slug}"
        self.database = f"record_pr_{pv.pr_number}"
        self.object_prefix = f"previews/{pv.slug}/"
        self.cache_db = 1 + pv.pr_number % 15
        self.provider = k8s.Provider(
            f"{args.project.prefix}-k8s",
            kubeconfig=self.outputs["kubeconfig"],
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"namespace": self.namespace, "database": self.database})
