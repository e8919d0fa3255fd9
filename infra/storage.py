"""Storage: the recordings bucket. Private, versioned, SSE-KMS, TLS only, browser uploads."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common import child, kms_key, policy, tags
from infra.config import ProjectConfig, StorageConfig

RECORDINGS_PREFIX = "recordings/"


@dataclass
class StorageArgs:
    project: ProjectConfig
    storage: StorageConfig


class Storage(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Storage", name, None, opts)
        p, cfg = args.project, args.storage
        prefix = p.prefix
        key = kms_key(self, p, f"{prefix}-recordings", f"{prefix} recordings bucket")
        bucket = aws.s3.Bucket(
            f"{prefix}-recordings",
            # S3 names are global: the prefix keeps two installs in one account apart, the
            # provider's random suffix keeps two accounts apart.
            bucket_prefix=f"{prefix}-recordings-",
            force_destroy=cfg.force_destroy,
            tags=tags(p, f"{prefix}-recordings"),
            opts=child(self),
        )
        aws.s3.BucketPublicAccessBlock(
            f"{prefix}-recordings",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child(self),
        )
        aws.s3.BucketOwnershipControls(
            f"{prefix}-recordings",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child(self),
        )
        aws.s3.BucketVersioning(
            f"{prefix}-recordings",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child(self),
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{prefix}-recordings",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": key.arn,
                    },
                    # One KMS call per bucket key, not per object: large uploads are multipart.
                    "bucket_key_enabled": True,
                }
            ],
            opts=child(self),
        )
        aws.s3.BucketPolicy(
            f"{prefix}-recordings",
            bucket=bucket.id,
            policy=policy(
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket.arn, bucket.arn.apply(lambda a: f"{a}/*")],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
                {
                    "Sid": "DenyOldTls",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket.arn, bucket.arn.apply(lambda a: f"{a}/*")],
                    "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
                },
            ),
            opts=child(self),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{prefix}-recordings",
            bucket=bucket.id,
            rules=[
                {
                    "id": "abort-incomplete-multipart",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
                {
                    # Direct uploads PUT to a staging key tagged record-staging=1; `complete`
                    # copies them to the recording's key without the tag. What is never
                    # completed expires here (a tag, not a prefix: previews share the bucket
                    # under their own prefixes).
                    "id": "expire-abandoned-direct-uploads",
                    "status": "Enabled",
                    "filter": {"tag": {"key": "record-staging", "value": "1"}},
                    "expiration": {"days": 2},
                },
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "noncurrent_version_expiration": {
                        "noncurrent_days": cfg.noncurrent_version_days
                    },
                },
            ],
            opts=child(self),
        )
        aws.s3.BucketCorsConfiguration(
            f"{prefix}-recordings",
            bucket=bucket.id,
            cors_rules=[
                {
                    # Browsers upload straight to S3 with presigned URLs.
                    "allowed_methods": ["PUT", "POST", "GET", "HEAD"],
                    "allowed_origins": list(cfg.cors_origins),
                    "allowed_headers": ["*"],
                    "expose_headers": ["ETag"],
                    "max_age_seconds": 3600,
                }
            ],
            opts=child(self),
        )
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.kms_key_arn = key.arn
        self.register_outputs({"bucket_name": self.bucket_name})
