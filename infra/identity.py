"""Identity: IRSA roles for the API, the worker and the migration Job, least privilege each,
and ``irsa_role``, which makes every role a Kubernetes ServiceAccount assumes through the
cluster's OIDC provider (these and the cluster's controllers' in ``infra/cluster.py``).

Only a base stack's roles may read the RDS master secret: its migration Job's (which bootstraps
the base's own database) and the database provisioner's (``infra/provisioner.py``), which makes
previews' databases with main's code. A preview's roles never can: its pods run pull-request
code, and its migration Job needs no AWS access at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common import child, policy, tags
from infra.config import ProjectConfig
from infra.provisioner import SERVICE_ACCOUNT
from infra.provisioning_access import provisioning_namespace


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

        def role(
            purpose: str,
            service_account: str,
            doc: pulumi.Output[str],
            namespace: str = args.namespace,
        ) -> aws.iam.Role:
            return irsa_role(
                self,
                p,
                purpose=purpose,
                oidc_provider_arn=args.oidc_provider_arn,
                oidc_issuer=args.oidc_issuer,
                namespace=namespace,
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
            # The same right for the ServiceAccount previews' provisioner Jobs run as, in the
            # provisioning namespace beside this one, with this stack's image
            # (infra/provisioner.py).
            self.provisioner_role = role(
                "db-provisioner",
                SERVICE_ACCOUNT,
                master_secret,
                namespace=provisioning_namespace(args.namespace),
            )
        self.register_outputs({"api_role": self.api_role.arn})


def irsa_role(
    parent: pulumi.Resource,
    p: ProjectConfig,
    *,
    purpose: str,
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer: pulumi.Input[str],
    namespace: str,
    service_account: str,
    role_policy: pulumi.Input[str] | None = None,
    managed_policy_arn: str | None = None,
) -> aws.iam.Role:
    """A role only the one ServiceAccount can assume (IRSA), with one inline policy or one AWS
    managed policy."""
    name = f"{p.prefix}-{purpose}"
    subject = f"system:serviceaccount:{namespace}:{service_account}"
    issuer_host = pulumi.Output.from_input(oidc_issuer).apply(
        lambda url: url.removeprefix("https://")
    )
    trust = pulumi.Output.all(oidc_provider_arn, issuer_host).apply(
        lambda a: json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Federated": a[0]},
                        "Action": "sts:AssumeRoleWithWebIdentity",
                        "Condition": {
                            "StringEquals": {
                                f"{a[1]}:sub": subject,
                                f"{a[1]}:aud": "sts.amazonaws.com",
                            }
                        },
                    }
                ],
            }
        )
    )
    role = aws.iam.Role(
        name,
        name=name,
        assume_role_policy=trust,
        max_session_duration=3600,
        tags=tags(p, name),
        opts=child(parent),
    )
    if role_policy is not None:
        aws.iam.RolePolicy(name, role=role.id, policy=role_policy, opts=child(parent))
    if managed_policy_arn is not None:
        aws.iam.RolePolicyAttachment(
            name, role=role.name, policy_arn=managed_policy_arn, opts=child(parent)
        )
    return role
