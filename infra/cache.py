"""Cache: an ElastiCache Valkey replication group, TLS and an auth token, encrypted at rest."""

from __future__ import annotations

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


class Cache(pulumi.ComponentResource):
    primary_endpoint: pulumi.Output[str]
    replication_group_id: pulumi.Output[str]
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
            auth_token=args.auth_token,
            auth_token_update_strategy="ROTATE",
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
        self.replication_group_id = group.id
        self.member_cluster_ids = [
            pulumi.Output.concat(group.replication_group_id, f"-{n:03d}")
            for n in range(1, 2 + cfg.replicas)
        ]
        self.register_outputs({"primary_endpoint": self.primary_endpoint})
