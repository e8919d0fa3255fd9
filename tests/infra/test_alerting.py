"""Alerts reach the pager, and only Record's: the Alertmanager role can use the alert topic's
key, the routing tree Alertmanager really runs sends Record's pages to SNS and nothing else
there (checked with amtool), and the ElastiCache alarms watch metrics AWS publishes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws
from moto.iam.access_control import IAMPolicy, PermissionResult

from infra.cluster import CHARTS
from infra.plan import Plan, render
from tests.infra.conftest import of_kind, one
from tests.infra.operator_alertmanager import CHART_BASE_CONFIG, CHART_VERSION, effective_config

BASE_STACKS = ("dev", "staging", "prod")
REGION = "eu-west-1"
# What the operator would read from the record-alert-webhook Secret (the plan masks it).
WEBHOOK_URL = "https://tickets.example.com/alertmanager"


# -- the Alertmanager role and the topic's key ------------------------------------------------


def _alertmanager_policies(plan: Plan) -> list[dict[str, Any]]:
    """Every inline policy on the Alertmanager role, as IAM stores it (moto)."""
    role = one(
        r
        for r in plan.of_type("aws:iam/role:Role")
        if r["inputs"].get("name", "").endswith("-alertmanager")
    )
    role_id = f"offline-placeholder-{role['name']}"
    documents = [
        r["inputs"]["policy"]
        for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
        if r["inputs"]["role"] == role_id
    ]
    assert documents
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        iam.create_role(
            RoleName=role["inputs"]["name"],
            AssumeRolePolicyDocument=role["inputs"]["assumeRolePolicy"],
        )
        # IAM refuses a malformed document here.
        for index, document in enumerate(documents):
            iam.put_role_policy(
                RoleName=role["inputs"]["name"], PolicyName=f"p{index}", PolicyDocument=document
            )
        stored = [
            iam.get_role_policy(RoleName=role["inputs"]["name"], PolicyName=name)["PolicyDocument"]
            for name in iam.list_role_policies(RoleName=role["inputs"]["name"])["PolicyNames"]
        ]
    return [doc if isinstance(doc, dict) else json.loads(doc) for doc in stored]


def _allowed(documents: list[dict[str, Any]], action: str, resource: str) -> bool:
    results = [IAMPolicy(json.dumps(d)).is_action_permitted(action, resource) for d in documents]
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_alertmanager_may_publish_to_the_encrypted_topic(
    plans: dict[str, Plan], stack: str
) -> None:
    plan = plans[stack]
    topic = one(plan.of_type("aws:sns/topic:Topic"))["inputs"]
    topic_arn = f"arn:aws:sns:{REGION}:000000000000:{topic['name']}"
    documents = _alertmanager_policies(plan)
    # The topic's key: SNS calls KMS as the publisher, so both are needed to publish.
    statements = [s for d in documents for s in d["Statement"] if "kms" in json.dumps(s["Action"])]
    key_statement = one(statements)
    key_arn = key_statement["Resource"]
    assert isinstance(key_arn, str)
    assert key_arn.startswith("arn:aws:kms:")
    assert key_arn.endswith(f"/{topic['kmsMasterKeyId']}")
    assert sorted(key_statement["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert key_statement["Effect"] == "Allow"
    assert not {"NotAction", "NotResource", "Condition"} & set(key_statement)

    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert _allowed(documents, action, key_arn), action
    assert _allowed(documents, "sns:Publish", topic_arn)

    other_key = key_arn.rsplit("/", 1)[0] + "/another-key"
    for action, resource in [
        ("kms:Decrypt", other_key),
        ("kms:GenerateDataKey", other_key),
        ("kms:Decrypt", "*"),
        ("kms:Encrypt", key_arn),
        ("kms:CreateGrant", key_arn),
        ("kms:PutKeyPolicy", key_arn),
        ("kms:ScheduleKeyDeletion", key_arn),
        ("sns:Publish", topic_arn.replace(topic["name"], "another-topic")),
        ("sns:Subscribe", topic_arn),
    ]:
        assert not _allowed(documents, action, resource), (action, resource)


# -- the routing tree Alertmanager runs -------------------------------------------------------


@pytest.fixture(scope="session")
def amtool() -> str:
    path = shutil.which("amtool")
    assert path, "amtool not found: apt-get install prometheus-alertmanager (.ci/run does)"
    return path


def _effective_alertmanager_yml(plan: Plan, directory: Path) -> tuple[Path, dict[str, Any]]:
    release = one(
        r
        for r in plan.of_type("kubernetes:helm.sh/v3:Release")
        if r["inputs"]["chart"] == "kube-prometheus-stack"
    )["inputs"]
    # The base configuration below is this chart version's default: a bump re-checks it.
    assert release["version"] == CHARTS["kube-prometheus-stack"][1] == CHART_VERSION
    alertmanager = release["values"]["alertmanager"]
    assert not {"config", "stringConfig"} & set(alertmanager)
    spec = alertmanager["alertmanagerSpec"]
    # The chart's default namespace selector, {}, reads AlertmanagerConfigs in every namespace.
    assert "alertmanagerConfigNamespaceSelector" not in spec
    selected = [
        m
        for m in of_kind(plan, "AlertmanagerConfig")
        if spec["alertmanagerConfigSelector"]["matchLabels"].items()
        <= m["metadata"]["labels"].items()
    ]
    assert selected == of_kind(plan, "AlertmanagerConfig")
    config = effective_config(
        CHART_BASE_CONFIG,
        selected,
        spec["alertmanagerConfigMatcherStrategy"]["type"],
        secrets={("record-alert-webhook", "url"): WEBHOOK_URL},
    )
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def _routes_to(amtool: str, config: Path, labels: dict[str, str]) -> list[str]:
    result = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(",")


def _shipped_alerts(plan: Plan) -> list[dict[str, str]]:
    """Each alert's labels as Prometheus sends them: the rule's labels and its name (the SLO
    expressions aggregate every series label away)."""
    rule = one(of_kind(plan, "PrometheusRule"))
    return [
        {**r.get("labels", {}), "alertname": r["alert"]}
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    ]


@pytest.fixture(scope="module")
def prod_with_webhook() -> Plan:
    return render("prod", {"record:alertWebhookUrl": WEBHOOK_URL})


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_only_records_alerts_reach_its_pager(
    plans: dict[str, Plan], stack: str, amtool: str, tmp_path: Path
) -> None:
    _check_routing(plans[stack], amtool, tmp_path)


def test_tickets_reach_the_webhook_when_there_is_one(
    prod_with_webhook: Plan, amtool: str, tmp_path: Path
) -> None:
    config = _check_routing(prod_with_webhook, amtool, tmp_path)
    webhook = one(r for r in config["receivers"] if r["name"] == "record-prod/record/tickets")
    assert webhook["webhook_configs"] == [{"url": WEBHOOK_URL, "send_resolved": True}]


def _check_routing(plan: Plan, amtool: str, tmp_path: Path) -> dict[str, Any]:
    path, config = _effective_alertmanager_yml(plan, tmp_path)
    check = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    topic = one(plan.of_type("aws:sns/topic:Topic"))["inputs"]["name"]
    pagers = [
        r["name"]
        for r in config["receivers"]
        if any(c["topic_arn"].endswith(f":{topic}") for c in r.get("sns_configs", []))
    ]
    assert len(pagers) == 1, pagers
    pager: str = pagers[0]
    namespace = one(of_kind(plan, "AlertmanagerConfig"))["metadata"]["namespace"]
    # Tickets go to the webhook when the stack has one, else to SNS at a slower repeat.
    names = {r["name"] for r in config["receivers"]}
    tickets = f"{namespace}/record/tickets" if f"{namespace}/record/tickets" in names else pager

    alerts = _shipped_alerts(plan)
    assert {a["severity"] for a in alerts} == {"page", "ticket"}
    for alert in alerts:
        expected = pager if alert["severity"] == "page" else tickets
        assert _routes_to(amtool, path, alert) == [expected], alert

    cases: list[tuple[dict[str, str], list[str]]] = [
        # The chart's always-firing heartbeat.
        ({"alertname": "Watchdog", "severity": "none"}, ["null"]),
        # Another namespace's page: not Record's to answer.
        (
            {
                "alertname": "KubePersistentVolumeFillingUp",
                "namespace": "kube-system",
                "severity": "critical",
            },
            ["null"],
        ),
        (
            {"alertname": "RecordApiLatencyHigh", "namespace": "record-pr-7", "severity": "page"},
            ["null"],
        ),
        # A page that lost its namespace label.
        ({"alertname": "RecordApiLatencyHigh", "severity": "page"}, ["null"]),
        # The chart's rules about Record's own pods.
        (
            {
                "alertname": "KubePersistentVolumeFillingUp",
                "namespace": namespace,
                "severity": "critical",
            },
            [pager],
        ),
        (
            {
                "alertname": "KubeDeploymentReplicasMismatch",
                "namespace": namespace,
                "severity": "warning",
            },
            [tickets],
        ),
        (
            {"alertname": "CPUThrottlingHigh", "namespace": namespace, "severity": "info"},
            [f"{namespace}/record/none"],
        ),
    ]
    for labels, receivers in cases:
        assert _routes_to(amtool, path, labels) == receivers, labels
    return config


# -- CloudWatch alarms on ElastiCache ----------------------------------------------------------

# AWS/ElastiCache, node-based Valkey/Redis OSS clusters: host-level and engine metrics are
# published per node with the dimensions CacheClusterId and (optionally) CacheNodeId.
ELASTICACHE_DIMENSIONS = {"CacheClusterId", "CacheNodeId"}
ELASTICACHE_NODE_METRICS = {
    "CPUUtilization",
    "EngineCPUUtilization",
    "DatabaseMemoryUsagePercentage",
    "CurrConnections",
    "Evictions",
    "FreeableMemory",
    "SwapUsage",
    "ReplicationLag",
}


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_cache_alarms_use_the_dimensions_aws_publishes(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    group = one(plan.of_type("aws:elasticache/replicationGroup:ReplicationGroup"))["inputs"]
    members = {
        f"{group['replicationGroupId']}-{n:03d}" for n in range(1, group["numCacheClusters"] + 1)
    }
    alarms = [
        a["inputs"]
        for a in plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        if a["inputs"]["namespace"] == "AWS/ElastiCache"
    ]
    assert alarms
    watched: dict[str, set[str]] = {}
    for alarm in alarms:
        assert alarm["metricName"] in ELASTICACHE_NODE_METRICS, alarm["metricName"]
        dimensions = alarm["dimensions"]
        assert "CacheClusterId" in dimensions, alarm["name"]
        assert set(dimensions) <= ELASTICACHE_DIMENSIONS, alarm["name"]
        watched.setdefault(dimensions["CacheClusterId"], set()).add(alarm["metricName"])
    # Every node is watched, for the same metrics: a failover moves the primary.
    assert set(watched) == members
    assert len({frozenset(metrics) for metrics in watched.values()}) == 1
