"""Identity: IRSA roles for the API, the worker and the migration Job, least privilege each.

Only a base stack's roles may read the RDS master secret: its migration Job's (which bootstraps
the base's own database) and the database provisioner's (``infra/provisioner.py``), which makes
previews' databases with main's code. A preview's roles never can: its pods run pull-request
code, and its migration Job needs no AWS access at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.cluster import irsa_role
from infra.common import policy
from infra.config import ProjectConfig
from infra.provisioner import SERVICE_ACCOUNT


@dataclass
class IdentityArgs:
    project: ProjectConfig
    namespace: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    bucket_kms_key_arn: pulumi.Input[str]
    # Objects live under this prefix: a preview stack gets its own inside the base bucket.
    object_prefix: str
    # The RDS master secret and its key: a base stack's only. None on a preview, whose roles
    # then get no access to either (and whose migration Job no role).
    db_master_secret_arn: pulumi.Input[str] | None = None
    db_secret_kms_key_arn: pulumi.Input[str] | None = None


class Identity(pulumi.ComponentResource):
    api_role: aws.iam.Role
    worker_role: aws.iam.Role
    migrate_role: aws.iam.Role | None
    provisioner_role: aws.iam.Role | None

    def __init__(
        self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Identity", name, None, opts)
        p = args.project
        bucket = pulumi.Output.from_input(args.bucket_arn)
        objects = bucket.apply(lambda arn: f"{arn}/{args.object_prefix}*")

        def object_access(*actions: str, list_uploads: bool = False) -> pulumi.Output[str]:
            # ListMultipartUploads takes no s3:prefix condition: it is granted on the bucket.
            uploads = (
                [
                    {
                        "Sid": "ListUploads",
                        "Effect": "Allow",
                        "Action": "s3:ListBucketMultipartUploads",
                        "Resource": bucket,
                    }
                ]
                if list_uploads
                else []
            )
            return policy(
                {
                    "Sid": "Objects",
                    "Effect": "Allow",
                    "Action": list(actions),
                    "Resource": objects,
                },
                {
                    "Sid": "ListOwnPrefix",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": bucket,
                    "Condition": {"StringLike": {"s3:prefix": f"{args.object_prefix}*"}},
                },
                {
                    "Sid": "BucketKey",
                    "Effect": "Allow",
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                    "Resource": args.bucket_kms_key_arn,
                },
                *uploads,
            )

        def role(purpose: str, service_account: str, doc: pulumi.Output[str]) -> aws.iam.Role:
            return irsa_role(
                self,
                p,
                purpose=purpose,
                oidc_provider_arn=args.oidc_provider_arn,
                oidc_issuer=args.oidc_issuer,
                namespace=args.namespace,
                service_account=service_account,
                role_policy=doc,
            )

        # The API stores uploads and serves media; it never deletes versions.
        self.api_role = role(
            "api",
            "record-api",
            # PutObjectTagging: direct uploads are signed with their staging tag, and the copy
            # to the recording's key replaces the tags.
            object_access(
                "s3:GetObject",
                "s3:PutObject",
                "s3:PutObjectTagging",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ),
        )
        # The worker reads media to transcribe it and writes derived artefacts; it deletes a
        # deleted org's objects and aborts its uploads in progress (worker/purge.py). Like the
        # API, it never deletes versions: those expire with the bucket's lifecycle rule.
        self.worker_role = role(
            "worker",
            "record-worker",
            object_access(
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                list_uploads=True,
            ),
        )
        self.migrate_role = self.provisioner_role = None
        if args.db_master_secret_arn is not None and args.db_secret_kms_key_arn is not None:
            master_secret = policy(
                {
                    "Effect": "Allow",
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": args.db_master_secret_arn,
                },
                {
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": args.db_secret_kms_key_arn,
                },
            )
            # The base's migration Job reads the RDS-managed master secret once, to create its
            # database's roles and the database (infra/db_bootstrap.py).
            self.migrate_role = role("migrate", "record-migrate", master_secret)
            # The same right for the ServiceAccount previews' provisioner Jobs run as, in this
            # namespace, with this stack's image (infra/provisioner.py).
            self.provisioner_role = role("db-provisioner", SERVICE_ACCOUNT, master_secret)
        self.register_outputs({"api_role": self.api_role.arn})
