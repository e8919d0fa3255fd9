"""Database: RDS PostgreSQL 18 (pgvector 0.8 ships with it), reachable only from the cluster."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common import assume_role_policy, child, ingress_only_from, kms_key, tags
from infra.config import DatabaseConfig, ProjectConfig

# RDS applies minor upgrades itself in the maintenance window. Pinned to a minor ("18.3"), the
# instance would then differ from the program after each one and the next `pulumi up` would
# try to take it back down, which RDS refuses: with automatic minor upgrades the program
# names the major version only.
AUTO_MINOR_VERSION_UPGRADE = True


def engine_version(configured: str, auto_minor_upgrade: bool) -> str:
    """The engineVersion to declare: ``18`` for ``18.3`` when RDS owns the minor version."""
    return configured.split(".", 1)[0] if auto_minor_upgrade else configured


@dataclass
class DatabaseArgs:
    project: ProjectConfig
    database: DatabaseConfig
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    client_security_group_id: pulumi.Input[str]


class Database(pulumi.ComponentResource):
    address: pulumi.Output[str]
    port: pulumi.Output[int]
    identifier: pulumi.Output[str]
    master_secret_arn: pulumi.Output[str]
    master_secret_kms_key_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Database", name, None, opts)
        p, cfg = args.project, args.database
        prefix = p.prefix
        # Kept when the stack is destroyed: the final snapshot and the retained automated
        # backups are encrypted with it, and a key deleted with the stack (30 days later) would
        # leave them unrestorable. Schedule its deletion by hand once they are no longer
        # needed (DEPLOYMENT.md, "Destroying a stack").
        key = kms_key(
            self,
            p,
            f"{prefix}-db",
            f"{prefix} RDS storage, Performance Insights and master secret",
            retain_on_delete=True,
        )
        subnets = aws.rds.SubnetGroup(
            f"{prefix}-db",
            name=f"{prefix}-db",
            subnet_ids=args.subnet_ids,
            tags=tags(p, f"{prefix}-db"),
            opts=child(self),
        )
        sg = ingress_only_from(
            self,
            p,
            f"{prefix}-db",
            service="PostgreSQL",
            port=5432,
            vpc_id=args.vpc_id,
            client_security_group_id=args.client_security_group_id,
        )
        # One parameter group per major version: a major upgrade (16 to 18) makes the new
        # group and the instance moves to it in the same update.
        major = cfg.engine_version.split(".", 1)[0]
        params = aws.rds.ParameterGroup(
            f"{prefix}-pg{major}",
            name=f"{prefix}-pg{major}",
            family=f"postgres{major}",
            description=f"{prefix} PostgreSQL {major}",
            parameters=[
                {
                    "name": "shared_preload_libraries",
                    "value": "pg_stat_statements",
                    "apply_method": "pending-reboot",
                },
                # HNSW builds on large tables: see DEPLOYMENT.md for the measured figures.
                {"name": "maintenance_work_mem", "value": str(cfg.maintenance_work_mem_kb)},
                {"name": "max_parallel_maintenance_workers", "value": "2"},
                # The 1M-row HNSW build asked for a larger max_wal_size (MB).
                {"name": "max_wal_size", "value": "8192"},
                {"name": "log_min_duration_statement", "value": str(cfg.log_min_duration_ms)},
                {"name": "pg_stat_statements.track", "value": "top"},
                {"name": "rds.force_ssl", "value": "1"},
                {"name": "log_lock_waits", "value": "1"},
                {"name": "idle_in_transaction_session_timeout", "value": "60000"},
            ],
            tags=tags(p, f"{prefix}-pg{major}"),
            opts=child(self),
        )
        monitoring_role = aws.iam.Role(
            f"{prefix}-rds-monitoring",
            assume_role_policy=assume_role_policy("monitoring.rds.amazonaws.com"),
            tags=tags(p, f"{prefix}-rds-monitoring"),
            opts=child(self),
        )
        aws.iam.RolePolicyAttachment(
            f"{prefix}-rds-monitoring",
            role=monitoring_role.name,
            policy_arn="arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole",
            opts=child(self),
        )
        instance = aws.rds.Instance(
            f"{prefix}-db",
            identifier=prefix,
            engine="postgres",
            engine_version=engine_version(cfg.engine_version, AUTO_MINOR_VERSION_UPGRADE),
            instance_class=cfg.instance_class,
            allocated_storage=cfg.allocated_storage_gb,
            max_allocated_storage=cfg.max_allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=key.arn,
            db_name=cfg.name,
            username="record_admin",
            # RDS keeps the master password in Secrets Manager and rotates it; it never
            # passes through Pulumi state.
            manage_master_user_password=True,
            master_user_secret_kms_key_id=key.arn,
            iam_database_authentication_enabled=True,
            multi_az=cfg.multi_az,
            deletion_protection=cfg.deletion_protection,
            publicly_accessible=False,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[sg.id],
            parameter_group_name=params.name,
            backup_retention_period=cfg.backup_retention_days,
            backup_window="03:00-04:00",
            maintenance_window="sun:04:30-sun:05:30",
            copy_tags_to_snapshot=True,
            delete_automated_backups=False,
            skip_final_snapshot=False,
            final_snapshot_identifier=final_snapshot_identifier(prefix, key.arn),
            performance_insights_enabled=True,
            performance_insights_kms_key_id=key.arn,
            performance_insights_retention_period=7,
            monitoring_interval=60,
            monitoring_role_arn=monitoring_role.arn,
            enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
            auto_minor_version_upgrade=AUTO_MINOR_VERSION_UPGRADE,
            # An instance made on 16 moves to 18 when the program says so (in the maintenance
            # window: apply_immediately is off). Then the db-bootstrap updates pgvector.
            allow_major_version_upgrade=True,
            ca_cert_identifier="rds-ca-rsa2048-g1",
            apply_immediately=False,
            tags=tags(p, prefix),
            opts=child(self, protect=cfg.deletion_protection),
        )
        self.address = instance.address
        self.port = instance.port
        self.identifier = instance.identifier
        self.master_secret_arn = instance.master_user_secrets.apply(_master_secret_arn)
        self.master_secret_kms_key_arn = key.arn
        self.register_outputs({"address": self.address, "identifier": self.identifier})


def final_snapshot_identifier(prefix: str, key_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    """``<prefix>-final-<8 hex>``: unique per instance of the stack, stable across updates.

    A fixed ``<prefix>-final`` makes the second destroy of a re-created stack fail
    (DBSnapshotAlreadyExists: the first one's snapshot is still there). The suffix comes from
    the database key's ARN, whose key id is a UUID AWS assigns when the key is made: the
    same on every `up`
    (the provider only records the identifier in state, to use at delete; it changes nothing
    in AWS), new when the stack is made again, and the key it names is the one the snapshot
    is encrypted with."""
    suffix = pulumi.Output.from_input(key_arn).apply(snapshot_suffix)
    return pulumi.Output.concat(prefix, "-final-", suffix)


def snapshot_suffix(key_arn: str) -> str:
    return hashlib.sha256(key_arn.encode()).hexdigest()[:8]


def _master_secret_arn(secrets: Sequence[aws.rds.outputs.InstanceMasterUserSecret]) -> str:
    """The RDS-managed master secret's ARN: manage_master_user_password makes exactly one."""
    arn = secrets[0].secret_arn if secrets else None
    if arn is None:
        raise ValueError("RDS reports no managed master secret for the instance")
    return arn
