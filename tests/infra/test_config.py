"""The typed config refuses what must not deploy, with a message naming the key to fix."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError
from infra.plan import render


def _prod_database(**changes: Any) -> dict[str, Any]:
    return {"multiAz": True, "deletionProtection": True, "backupRetentionDays": 35, **changes}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"record:database": _prod_database(deletionProtection=False)},
            "database.deletionProtection must be true",
        ),
        ({"record:database": _prod_database(multiAz=False)}, "database.multiAz must be true"),
        ({"record:cache": {"automaticFailover": False}}, "cache.automaticFailover must be true"),
        ({"record:network": {"azCount": 2}}, "network.azCount must be 3"),
        (
            {"record:image": {"prebuilt": {"api": "ghcr.io/example/record:latest"}}},
            "must be pinned by digest",
        ),
        ({"record:size": "huge"}, "record:size must be one of"),
        ({"record:database": _prod_database(iops=3000)}, "unknown keys ['iops']"),
        ({"record:database": _prod_database(engineVersion="15.7")}, "PostgreSQL 16"),
        ({"record:certificateArn": "arn:aws:iam::1:server-certificate/x"}, "ACM certificate"),
        ({"record:storage": {"corsOrigins": ["*"]}}, "not '*'"),
        ({"record:cluster": {}}, "cluster.publicAccessCidrs is required"),
        ({"record:cluster": {"publicAccessCidrs": ["0.0.0.0/0"]}}, "the whole internet"),
        ({"record:owner": None}, "record:owner and record:costCentre are required"),
        ({"record:cacheAuthToken": None}, "missing secret record:cacheAuthToken"),
        ({"record:rollout": {"canary": True, "steps": [50, 10]}}, "rollout.steps must rise"),
    ],
)
def test_prod_refuses_unsafe_config(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        render("prod", overrides)


def test_existing_cluster_needs_its_network() -> None:
    with pytest.raises(ConfigError, match=r"cluster.mode 'existing' needs .*cluster.vpcId"):
        render("dev", {"record:cluster": {"mode": "existing"}})


def test_preview_cannot_be_production() -> None:
    with pytest.raises(ConfigError, match="preview stack cannot be a production stack"):
        render("preview", {"record:production": "true"})


def test_size_presets_set_capacity() -> None:
    small = render("staging")
    large = render("staging", {"record:size": "large"})

    def db_class(plan: Any) -> str:
        return str(plan.of_type("aws:rds/instance:Instance")[0]["inputs"]["instanceClass"])

    def nodes(plan: Any) -> dict[str, int]:
        return dict(plan.of_type("aws:eks/nodeGroup:NodeGroup")[0]["inputs"]["scalingConfig"])

    assert db_class(small) == "db.t4g.medium"
    assert db_class(large) == "db.r6g.2xlarge"
    assert nodes(small)["maxSize"] < nodes(large)["maxSize"]
