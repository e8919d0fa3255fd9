"""What every block shares: names from project + stack, tags, and the policy-document helper."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import ProjectConfig


def tags(project: ProjectConfig, name: str, **extra: str) -> dict[str, str]:
    """Tags for one resource. Set explicitly on each: transforms do not run under mocks, and
    an explicit list is what a reviewer of the plan can see."""
    return {**project.tags, "Name": name, **extra}


def policy(*statements: dict[str, Any]) -> pulumi.Output[str]:
    """An IAM policy document from statements whose values may be Outputs."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def assume_role_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def kms_key(
    parent: pulumi.Resource,
    project: ProjectConfig,
    name: str,
    description: str,
    *,
    retain_on_delete: bool = False,
    **extra: Any,
) -> aws.kms.Key:
    """A customer-managed key with rotation on: every block encrypts its data with its own.
    ``retain_on_delete`` for a key whose data outlives the stack (snapshots, backups)."""
    return aws.kms.Key(
        name,
        description=description,
        enable_key_rotation=True,
        deletion_window_in_days=30,
        tags=tags(project, name),
        opts=child(parent, retain_on_delete=retain_on_delete),
        **extra,
    )


def ingress_only_from(
    parent: pulumi.Resource,
    project: ProjectConfig,
    name: str,
    *,
    service: str,
    port: int,
    vpc_id: pulumi.Input[str],
    client_security_group_id: pulumi.Input[str],
) -> aws.ec2.SecurityGroup:
    """A security group that lets ``service`` be reached on ``port`` from one client security
    group (the cluster's) and from nowhere else, with no egress."""
    return aws.ec2.SecurityGroup(
        name,
        name=name,
        description=f"{service} from the cluster's nodes and pods only",
        vpc_id=vpc_id,
        ingress=[
            {
                "description": f"{service} from the cluster security group",
                "protocol": "tcp",
                "from_port": port,
                "to_port": port,
                "security_groups": [client_security_group_id],
            }
        ],
        egress=[],
        tags=tags(project, name),
        opts=child(parent),
    )
