"""Cache: an ElastiCache Valkey replication group, TLS and RBAC users, encrypted at rest.

The base stack owns the user group: a disabled ``default`` user (ElastiCache requires one) and
the app's user, whose password is ``cacheAuthToken``. A preview stack adds a user of its own
to the group (``aws.elasticache.UserGroupAssociation``), allowed only keys under its
``REDIS_KEY_PREFIX`` (infra/preview.py); it never sees the base's password.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common import child, ingress_only_from, kms_key, tags
from infra.config import CacheConfig, ProjectConfig


@dataclass
class CacheArgs:
    project: ProjectConfig
    cache: CacheConfig
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    client_security_group_id: pulumi.Input[str]
    auth_token: pulumi.Input[str]


# Valkey's ACL rules, as ElastiCache takes them. The base's app user may do what the AUTH
# token's default user could; a preview's is confined to its prefix (and no FLUSHALL, KEYS,
# CONFIG, DEBUG, ...: @dangerous).
APP_ACCESS = "on ~* +@all"
DEFAULT_ACCESS = "off -@all"


def preview_access(key_prefix: str) -> str:
    return f"on ~{key_prefix}* +@all -@dangerous"


def derived_password(secret: pulumi.Input[str], label: str) -> pulumi.Output[str]:
    """A password for one user, an HMAC of a stack secret: it says nothing of the secret."""
    return pulumi.Output.secret(
        pulumi.Output.from_input(secret).apply(
            lambda value: hmac.new(str(value).encode(), label.encode(), hashlib.sha256).hexdigest()
        )
    )


class Cache(pulumi.ComponentResource):
    primary_endpoint: pulumi.Output[str]
    # The user group previews join, and the user name the base's own pods log in as.
    user_group_id: pulumi.Output[str]
    app_user_name: str
    # AWS/ElastiCache publishes per member cluster (CacheClusterId), never per replication
    # group: "<group>-001" is the first node, then one per replica.
    member_cluster_ids: list[pulumi.Output[str]]

    def __init__(
        self, name: str, args: CacheArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Cache", name, None, opts)
        p, cfg = args.project, args.cache
        prefix = p.prefix
        key = kms_key(self, p, f"{prefix}-cache", f"{prefix} ElastiCache at-rest encryption")
        subnets = aws.elasticache.SubnetGroup(
            f"{prefix}-cache",
            name=f"{prefix}-cache",
            subnet_ids=args.subnet_ids,
            tags=tags(p, f"{prefix}-cache"),
            opts=child(self),
        )
        sg = ingress_only_from(
            self,
            p,
            f"{prefix}-cache",
            service="Valkey",
            port=6379,
            vpc_id=args.vpc_id,
            client_security_group_id=args.client_security_group_id,
        )
        default_user = aws.elasticache.User(
            f"{prefix}-valkey-default",
            user_id=f"{prefix}-default",
            user_name="default",
            engine="valkey",
            access_string=DEFAULT_ACCESS,
            passwords=[derived_password(args.auth_token, f"record-valkey-default:{prefix}")],
            tags=tags(p, f"{prefix}-default"),
            opts=child(self),
        )
        app_user = aws.elasticache.User(
            f"{prefix}-valkey-app",
            user_id=f"{prefix}-app",
            user_name=f"{prefix}-app",
            engine="valkey",
            access_string=APP_ACCESS,
            passwords=[pulumi.Output.secret(args.auth_token)],
            tags=tags(p, f"{prefix}-app"),
            opts=child(self),
        )
        users = aws.elasticache.UserGroup(
            f"{prefix}-valkey",
            user_group_id=prefix,
            engine="valkey",
            user_ids=[default_user.user_id, app_user.user_id],
            tags=tags(p, prefix),
            # Previews add their users with UserGroupAssociation: not this group's to remove.
            opts=child(self, ignore_changes=["userIds"]),
        )
        group = aws.elasticache.ReplicationGroup(
            f"{prefix}-valkey",
            replication_group_id=prefix,
            description=f"{prefix} rate limits, caches and sessions",
            engine="valkey",
            engine_version=cfg.engine_version,
            node_type=cfg.node_type,
            num_cache_clusters=1 + cfg.replicas,
            automatic_failover_enabled=cfg.automatic_failover,
            multi_az_enabled=cfg.automatic_failover,
            port=6379,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            user_group_ids=[users.user_group_id],
            at_rest_encryption_enabled=True,
            kms_key_id=key.arn,
            subnet_group_name=subnets.name,
            security_group_ids=[sg.id],
            snapshot_retention_limit=7 if cfg.automatic_failover else 1,
            snapshot_window="02:00-03:00",
            maintenance_window="sun:05:30-sun:06:30",
            auto_minor_version_upgrade=True,
            apply_immediately=False,
            tags=tags(p, prefix),
            opts=child(self),
        )
        self.primary_endpoint = group.primary_endpoint_address
        self.user_group_id = users.user_group_id
        self.app_user_name = f"{prefix}-app"
        self.member_cluster_ids = [
            pulumi.Output.concat(group.replication_group_id, f"-{n:03d}")
            for n in range(1, 2 + cfg.replicas)
        ]
        self.register_outputs({"primary_endpoint": self.primary_endpoint})
