"""What every block shares: names from project + stack, tags, and the policy-document helper."""

from __future__ import annotations

import json
from typing import Any

import pulumi

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
