"""The typed config refuses what must not deploy, with a message naming the key to fix."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from infra.config import (
    CacheConfig,
    ClusterConfig,
    ConfigError,
    DatabaseConfig,
    MailConfig,
    NetworkConfig,
    StackDefaults,
    StorageConfig,
    WorkloadsConfig,
)
from infra.plan import Plan, render, stack_config
from infra.presets import PRESETS
from tests.infra.conftest import one


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
        ({"record:database": _prod_database(engineVersion="16.4")}, "PostgreSQL 18"),
        ({"record:certificateArn": "arn:aws:iam::1:server-certificate/x"}, "ACM certificate"),
        ({"record:storage": {"corsOrigins": ["*"]}}, "not '*'"),
        ({"record:cluster": {}}, "cluster.publicAccessCidrs is required"),
        ({"record:cluster": {"publicAccessCidrs": ["0.0.0.0/0"]}}, "the whole internet"),
        ({"record:owner": None}, "record:owner is required"),
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


# -- the models: unknown keys, camelCase, defaults ---------------------------------------------


def _block(stack: str, block: str) -> dict[str, Any]:
    """``record:<block>`` as the stack file writes it."""
    raw = stack_config(stack)[0].get(f"record:{block}")
    return dict(json.loads(raw)) if raw else {}


@pytest.mark.parametrize(
    ("stack", "block"),
    [
        ("staging", "network"),
        ("staging", "cluster"),
        ("staging", "database"),
        ("staging", "cache"),
        ("staging", "storage"),
        ("staging", "workloads"),
        ("staging", "monitoring"),
        ("staging", "rollout"),
        ("staging", "image"),
        ("staging", "mail"),
        ("preview", "preview"),
    ],
)
def test_an_unknown_key_in_any_block_is_refused_by_name(stack: str, block: str) -> None:
    written = _block(stack, block)
    with pytest.raises(ConfigError) as refused:
        render(stack, {f"record:{block}": {**written, "replicaCount": 2}})
    message = str(refused.value)
    assert f"record:{block} has unknown keys ['replicaCount']; allowed: [" in message
    allowed = message.split("allowed: ", 1)[1]
    # What the block may hold, spelt as the stack file spells it ...
    assert all(f"'{key}'" in allowed for key in written)
    # ... and not the namespace's own keys a block carries (record:domain, the secrets).
    assert "record:" not in allowed


def test_an_unknown_key_in_a_nested_block_is_refused_by_name() -> None:
    with pytest.raises(
        ConfigError, match=r"record:image\.prebuilt has unknown keys \['worker'\]; allowed: "
    ):
        render("staging", {"record:image": {"prebuilt": {"worker": "x"}}})


def test_keys_are_camel_case_only() -> None:
    # The field's own snake_case name is for Python: in a stack file it is a typo.
    with pytest.raises(
        ConfigError, match=r"record:network has unknown keys \['az_count'\]; allowed: \['azCount'"
    ):
        render("staging", {"record:network": {"az_count": 3}})


def test_camel_case_keys_map_to_their_fields() -> None:
    plan: Plan = render(
        "staging",
        {
            "record:database": {"maxAllocatedStorageGb": 777, "backupRetentionDays": 9},
            "record:network": {"cidr": "10.30.0.0/16", "natPerAz": True},
        },
    )
    db = one(plan.of_type("aws:rds/instance:Instance"))["inputs"]
    assert (db["maxAllocatedStorage"], db["backupRetentionPeriod"]) == (777, 9)
    assert len(plan.of_type("aws:ec2/natGateway:NatGateway")) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # YAML's `"3"` is a string: not coerced to the int it looks like.
        ({"record:network": {"azCount": "3"}}, "record:network.azCount must be 2 or 3, got '3'"),
        ({"record:database": {"multiAz": "yes"}}, "record:database.multiAz must be a valid bool"),
        ({"record:rollout": {"pauseSeconds": 1.5}}, "record:rollout.pauseSeconds must be a valid"),
        ({"record:cache": ["cache.t4g.small"]}, "record:cache must be a mapping"),
        (
            {"record:preview": {"baseStack": "staging"}},
            "record:preview.prNumber is required",
        ),
        (
            # Pulumi would read it as org "record", stack "staging".
            {"record:preview": {"baseStack": "record/staging", "prNumber": 1}},
            "record:preview.baseStack",
        ),
        ({"record:domain": None}, "record:domain is required"),
        ({"record:dbAppPassword": None}, "missing secret record:dbAppPassword"),
        ({"record:openaiApiKey": None}, "missing secret record:openaiApiKey"),
        ({"record:storage": {"corsOrigins": "https://x.example"}}, "record:storage.corsOrigins"),
    ],
)
def test_a_bad_value_names_its_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        render("staging", overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        render(
            "staging",
            {"record:network": {"azCount": 4, "natPerAz": 1}, "record:cache": {"replicas": "1"}},
        )
    problems = str(refused.value).splitlines()
    assert problems == [
        "record:network.azCount must be 2 or 3, got 4",
        "record:network.natPerAz must be a valid boolean, got 1",
        "record:cache.replicas must be a valid integer, got '1'",
    ]


SMALL = StackDefaults(size=PRESETS["small"], production=False, domain="s.example.com")
LARGE_PRODUCTION = StackDefaults(size=PRESETS["large"], production=True, domain="p.example.com")


@pytest.mark.parametrize(
    ("model", "stack", "defaults"),
    [
        # The values the hand-written parser chose before the models (written out, not derived).
        (NetworkConfig, SMALL, {"cidr": "10.40.0.0/16", "az_count": 3, "nat_per_az": False}),
        (NetworkConfig, LARGE_PRODUCTION, {"nat_per_az": True}),
        (
            DatabaseConfig,
            SMALL,
            {
                "engine_version": "18",
                "instance_class": "db.t4g.medium",
                "allocated_storage_gb": 50,
                "max_allocated_storage_gb": 500,
                "multi_az": False,
                "deletion_protection": False,
                "backup_retention_days": 7,
                "maintenance_work_mem_kb": 524288,
                "log_min_duration_ms": 500,
            },
        ),
        (
            DatabaseConfig,
            LARGE_PRODUCTION,
            {
                "instance_class": "db.r6g.2xlarge",
                "allocated_storage_gb": 1000,
                "max_allocated_storage_gb": 10000,
                "multi_az": True,
                "deletion_protection": True,
                "backup_retention_days": 14,
                "maintenance_work_mem_kb": 8388608,
            },
        ),
        (
            CacheConfig,
            SMALL,
            {"node_type": "cache.t4g.small", "replicas": 1, "automatic_failover": False},
        ),
        (
            CacheConfig,
            LARGE_PRODUCTION,
            {"node_type": "cache.r7g.xlarge", "replicas": 2, "automatic_failover": True},
        ),
        (
            StorageConfig,
            SMALL,
            {
                "cors_origins": ("https://s.example.com",),
                "noncurrent_version_days": 30,
                "force_destroy": False,
            },
        ),
        (
            MailConfig,
            LARGE_PRODUCTION,
            {
                "domain": "p.example.com",
                "from_address": "no-reply@p.example.com",
                "from_name": "Record",
                "mail_from_subdomain": None,
            },
        ),
        (
            ClusterConfig,
            SMALL,
            {"mode": "eks", "public_access_cidrs": (), "private_only": False},
        ),
    ],
)
def test_defaults_are_what_the_stack_always_got(
    model: type[Any], stack: StackDefaults, defaults: dict[str, Any]
) -> None:
    block = model.model_validate({}, context={"stack": stack})
    assert {name: getattr(block, name) for name in defaults} == defaults


def test_workloads_defaults_follow_the_size() -> None:
    secrets = {"record:domain": "s.example.com", "record:certificateArn": "arn:aws:acm:x"}
    small = WorkloadsConfig.model_validate(
        {**secrets, "record:dbAppPassword": _secret(), "record:openaiApiKey": _secret()},
        context={"stack": SMALL},
    )
    assert (small.api_replicas, small.api_max_replicas) == (2, 4)
    assert (small.worker_min_replicas, small.worker_max_replicas) == (0, 3)
    assert (small.api_workers, small.worker_concurrency) == (2, 2)
    assert small.openai_base_url == "https://api.openai.com/v1"
    assert (small.signup_mode, small.log_level) == ("invite-only", "INFO")
    local = WorkloadsConfig.model_validate(
        {
            **secrets,
            "record:dbAppPassword": _secret(),
            "record:modelServerApiKey": _secret(),
            "record:openaiApiKey": _secret(),
            "useLocalModels": True,
        },
        context={"stack": LARGE_PRODUCTION},
    )
    assert (local.api_replicas, local.worker_max_replicas) == (4, 24)
    # Nothing of OpenAI's reaches a stack on local models, even when the secret is set.
    assert local.openai_base_url is None
    assert local.openai_api_key is None
    assert local.model_server_api_key is not None


def _secret() -> pulumi.Output[str]:
    """An Output with no Pulumi runtime behind it: the models check only that a secret is one."""
    return pulumi.Output.__new__(pulumi.Output)


def test_cluster_access_keys_read_as_the_stack_file_writes_them() -> None:
    cluster = ClusterConfig.model_validate(
        {
            "adminRoleArns": [
                "arn:aws:iam::111111111111:role/record-staging-deploy",
                "arn:aws-us-gov:iam::111111111111:role/ops/break-glass",
            ],
            "previewRoleArns": ["arn:aws-cn:iam::222222222222:role/github/record-preview"],
            "runnerActorIds": ["583231"],
            "clusterSecurityGroupId": "sg-0123",
        },
        by_alias=True,
        by_name=False,
    )
    assert cluster.admin_role_arns == (
        "arn:aws:iam::111111111111:role/record-staging-deploy",
        "arn:aws-us-gov:iam::111111111111:role/ops/break-glass",
    )
    assert cluster.preview_role_arns == ("arn:aws-cn:iam::222222222222:role/github/record-preview",)
    assert cluster.runner_actor_ids == ("583231",)
    assert cluster.cluster_security_group_id == "sg-0123"
    # Nobody besides the cluster's creator unless named.
    assert ClusterConfig().admin_role_arns == ()
    assert ClusterConfig().preview_role_arns == ()
