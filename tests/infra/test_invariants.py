"""Invariants every stack keeps, asserted on the offline render of each."""

from __future__ import annotations

import importlib
import inspect
import re
from functools import cache
from typing import Any

import pytest

from infra.api import PUBLIC_PATHS
from infra.plan import Plan
from tests.infra.conftest import STACKS, of_kind, one, pod_templates

BASE_STACKS = ("dev", "staging", "prod")
TAG_KEYS = {"project", "stack", "owner", "cost-centre"}
LABEL_KEYS = {f"record.dev/{key}" for key in TAG_KEYS}


@cache
def _takes_tags(type_token: str) -> bool:
    """Whether the AWS resource type has a ``tags`` argument (read from pulumi_aws itself)."""
    module, _, cls = re.match(r"aws:([\w]+)/(\w+):(\w+)", type_token).groups()  # type: ignore[union-attr]
    resource = getattr(importlib.import_module(f"pulumi_aws.{module.lower()}"), cls)
    return "tags" in inspect.signature(resource._internal_init).parameters


def _aws(plan: Plan) -> list[dict[str, Any]]:
    return [r for r in plan.resources if r["type"].startswith("aws:")]


@pytest.mark.parametrize("stack", STACKS)
def test_every_taggable_resource_carries_the_cost_tags(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    taggable = [r for r in _aws(plan) if _takes_tags(r["type"])]
    assert len(taggable) >= 3
    for resource in taggable:
        tags = resource["inputs"].get("tags") or {}
        assert set(tags) >= TAG_KEYS, f"{resource['type']} {resource['name']} tags: {tags}"
        assert tags["stack"] == stack
    for manifest in plan.manifests:
        labels = manifest["metadata"].get("labels", {})
        assert set(labels) >= LABEL_KEYS, f"{manifest['kind']} {manifest['metadata']['name']}"


def test_the_tag_check_knows_untaggable_types() -> None:
    assert _takes_tags("aws:s3/bucket:Bucket")
    assert not _takes_tags("aws:iam/rolePolicyAttachment:RolePolicyAttachment")


@pytest.mark.parametrize("stack", STACKS)
def test_names_derive_from_project_and_stack(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    # A preview's: its slug alone (its stack, preview-pr-<n>, says it too: infra/config.py).
    prefix = f"record-{stack}" if stack != "preview" else "record-pr-0"
    for resource in _aws(plan):
        assert resource["name"].startswith(prefix), resource["name"]
        for key in ("name", "identifier", "bucketPrefix", "replicationGroupId"):
            value = resource["inputs"].get(key)
            if isinstance(value, str) and not value.startswith("/"):
                assert value.startswith(prefix), f"{resource['type']}.{key} = {value}"
    for manifest in plan.manifests:
        assert (
            manifest["metadata"]
            .get("namespace", manifest["metadata"]["name"])
            .startswith("record-")
        )


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_encryption_everywhere(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    db = one(plan.of_type("aws:rds/instance:Instance"))["inputs"]
    assert db["storageEncrypted"] is True
    assert db["kmsKeyId"]
    assert db["performanceInsightsEnabled"] is True
    assert db["performanceInsightsKmsKeyId"]
    assert db["manageMasterUserPassword"] is True
    assert "password" not in db
    cache_ = one(plan.of_type("aws:elasticache/replicationGroup:ReplicationGroup"))["inputs"]
    assert cache_["atRestEncryptionEnabled"] is True
    assert cache_["kmsKeyId"]
    assert cache_["transitEncryptionEnabled"] is True
    assert cache_["transitEncryptionMode"] == "required"
    # RBAC users (tests/infra/test_preview_cache.py), not the shared AUTH token.
    assert cache_["userGroupIds"]
    assert "authToken" not in cache_
    buckets = plan.of_type("aws:s3/bucket:Bucket")
    sse = plan.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert len(sse) == len(buckets) == 1
    rule = sse[0]["inputs"]["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] == "aws:kms"
    assert rule["kmsMasterKeyId"]
    for key in plan.of_type("aws:kms/key:Key"):
        assert key["inputs"]["enableKeyRotation"] is True
    for topic in plan.of_type("aws:sns/topic:Topic"):
        assert topic["inputs"]["kmsMasterKeyId"]
    for cluster in plan.of_type("aws:eks/cluster:Cluster"):
        assert cluster["inputs"]["encryptionConfig"]["resources"] == ["secrets"]
    for template in plan.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        assert template["inputs"]["metadataOptions"]["httpTokens"] == "required"
        assert template["inputs"]["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_database_and_cache_are_private(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    assert one(plan.of_type("aws:rds/instance:Instance"))["inputs"]["publiclyAccessible"] is False
    groups = {
        r["inputs"]["name"]: r["inputs"]
        for r in plan.of_type("aws:ec2/securityGroup:SecurityGroup")
    }
    for name in (f"record-{stack}-db", f"record-{stack}-cache"):
        rules = groups[name]["ingress"]
        assert rules, name
        for rule in rules:
            assert not rule.get("cidrBlocks"), name
            assert not rule.get("ipv6CidrBlocks"), name
            assert len(rule["securityGroups"]) == 1, name
        assert groups[name]["egress"] == []
    policy = one(plan.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"))
    assert all(
        policy["inputs"][key] is True
        for key in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    )
    bucket_policy = one(plan.of_type("aws:s3/bucketPolicy:BucketPolicy"))["inputs"]["policy"]
    assert '"aws:SecureTransport": "false"' in bucket_policy


def test_prod_keeps_its_data_through_a_bad_day(plans: dict[str, Plan]) -> None:
    plan = plans["prod"]
    db = one(plan.of_type("aws:rds/instance:Instance"))["inputs"]
    assert db["engine"] == "postgres"
    assert db["engineVersion"].startswith("18")
    assert db["multiAz"] is True
    assert db["deletionProtection"] is True
    assert db["backupRetentionPeriod"] >= 7
    assert db["skipFinalSnapshot"] is False
    cache_ = one(plan.of_type("aws:elasticache/replicationGroup:ReplicationGroup"))["inputs"]
    assert cache_["automaticFailoverEnabled"] is True
    assert cache_["multiAzEnabled"] is True
    assert cache_["numCacheClusters"] >= 2
    assert len(plan.of_type("aws:ec2/natGateway:NatGateway")) == 3
    params = {
        p["name"]: p["value"]
        for p in one(plan.of_type("aws:rds/parameterGroup:ParameterGroup"))["inputs"]["parameters"]
    }
    assert params["shared_preload_libraries"] == "pg_stat_statements"
    assert int(params["maintenance_work_mem"]) >= 8 * 1024 * 1024
    assert "log_min_duration_statement" in params


@pytest.mark.parametrize("stack", ["staging"])
def test_non_prod_shares_one_nat(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    assert len(plan.of_type("aws:ec2/natGateway:NatGateway")) == 1
    assert len(plan.of_type("aws:ec2/subnet:Subnet")) == 6
    one(plan.of_type("aws:ec2/vpcEndpoint:VpcEndpoint"))
    db = one(plan.of_type("aws:rds/instance:Instance"))["inputs"]
    assert db["multiAz"] is False


@pytest.mark.parametrize("stack", STACKS)
def test_migration_job_runs_before_the_api(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    job = one(
        r
        for r in plan.of_type("kubernetes:batch/v1:Job")
        if r["inputs"]["metadata"]["name"].startswith("record-migrate-")
    )
    container = one(job["inputs"]["spec"]["template"]["spec"]["containers"])
    assert container["command"] == ["record", "db", "upgrade"]
    api_types = {"kubernetes:apps/v1:Deployment", "kubernetes:argoproj.io/v1alpha1:Rollout"}
    waiting = [
        r
        for r in plan.resources
        if r["type"] in api_types and r["name"].endswith(("-api", "-worker"))
    ]
    assert len(waiting) == 2
    for resource in waiting:
        assert job["name"] in resource["dependsOn"], resource["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_ingress_routes_only_public_paths(plans: dict[str, Plan], stack: str) -> None:
    ingress = one(of_kind(plans[stack], "Ingress"))
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws:acm:")
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert ingress["spec"]["tls"]
    paths = [
        (p["path"], p["pathType"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    assert sorted(paths) == sorted(PUBLIC_PATHS)
    for path, path_type in paths:
        # A Prefix path routes everything below it: "/" would publish /metrics.
        assert path != "/"
        for private in ("/metrics", "/livez", "/readyz"):
            assert not private.startswith(path if path_type == "Exact" else path + "/")
            assert path != private
    assert "defaultBackend" not in ingress["spec"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_is_restricted(plans: dict[str, Plan], stack: str) -> None:
    templates = pod_templates(plans[stack])
    assert len(templates) >= 3
    for name, pod in templates:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["runAsUser"] >= 10000, name
            assert container["resources"]["limits"]
            assert container["resources"]["requests"]
            assert "@sha256:" in container["image"]


@pytest.mark.parametrize("stack", STACKS)
def test_api_has_probes_drain_and_spread(plans: dict[str, Plan], stack: str) -> None:
    api = next(
        m
        for m in plans[stack].manifests
        if m["kind"] in {"Deployment", "Rollout"} and m["metadata"]["name"] == "record-api"
    )
    pod = api["spec"]["template"]["spec"]
    container = one(pod["containers"])
    assert container["command"][:2] == ["gunicorn", "app.main:create_app()"]
    assert "uvicorn_worker.UvicornWorker" in container["command"]
    # Every flag is one the installed gunicorn knows (it exits on an unknown one).
    from gunicorn.config import Config

    parsed = Config().parser().parse_args(container["command"][1:])
    assert parsed.args == ["app.main:create_app()"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert (
        pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"]
    )
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


@pytest.mark.parametrize("stack", STACKS)
def test_scaling_and_disruption_objects(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    hpa = one(of_kind(plan, "HorizontalPodAutoscaler"))
    assert hpa["spec"]["scaleTargetRef"]["name"] == "record-api"
    assert {p["metadata"]["name"] for p in of_kind(plan, "PodDisruptionBudget")} == {
        "record-api",
        "record-worker",
    }
    scaled = one(of_kind(plan, "ScaledObject"))
    trigger = one(scaled["spec"]["triggers"])
    assert trigger["type"] == "postgresql"
    assert "app_queue_depth" in trigger["metadata"]["query"]
    assert (
        trigger["authenticationRef"]["name"]
        == one(of_kind(plan, "TriggerAuthentication"))["metadata"]["name"]
    )
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(plan, "NetworkPolicy")}
    deny = policies["record-default-deny"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny
    for name in ("record-api", "record-worker", "record-migrate"):
        assert name in policies


def test_dev_scales_workers_to_zero_and_runs_local_models(plans: dict[str, Plan]) -> None:
    dev = plans["dev"]
    assert one(of_kind(dev, "ScaledObject"))["spec"]["minReplicaCount"] == 0
    names = {m["metadata"]["name"] for m in of_kind(dev, "Deployment")}
    assert "record-model-server" in names
    config = one(m for m in of_kind(dev, "ConfigMap") if m["metadata"]["name"] == "record-config")
    assert config["data"]["OPENAI_BASE_URL"].startswith("http://record-model-server.")
    assert config["data"]["TRANSCRIPTION_CONCURRENCY"] == "1"
    # The model server's own key, sent by the API and the worker as their OpenAI key.
    secret = one(m for m in of_kind(dev, "Secret") if m["metadata"]["name"] == "record-secrets")
    assert {"MODEL_SERVER_API_KEY", "OPENAI_API_KEY"} <= set(secret["stringData"])
    assert "record-model-server" in {p["metadata"]["name"] for p in of_kind(dev, "NetworkPolicy")}
    # An existing cluster: no VPC, no EKS built.
    assert not dev.of_type("aws:eks/cluster:Cluster")
    assert not dev.of_type("aws:ec2/vpc:Vpc")


def test_prod_uses_the_hosted_models_and_a_canary(plans: dict[str, Plan]) -> None:
    prod = plans["prod"]
    assert "record-model-server" not in {m["metadata"]["name"] for m in of_kind(prod, "Deployment")}
    config = one(m for m in of_kind(prod, "ConfigMap") if m["metadata"]["name"] == "record-config")
    assert config["data"]["TRANSCRIPTION_CONCURRENCY"] == "4"
    secret = one(m for m in of_kind(prod, "Secret") if m["metadata"]["name"] == "record-secrets")
    assert "OPENAI_API_KEY" in secret["stringData"]
    assert "MODEL_SERVER_API_KEY" not in secret["stringData"]
    rollout = one(of_kind(prod, "Rollout"))
    canary = rollout["spec"]["strategy"]["canary"]
    assert [s["setWeight"] for s in canary["steps"] if "setWeight" in s] == [10, 25, 50]
    template = one(of_kind(prod, "AnalysisTemplate"))
    assert canary["analysis"]["templates"][0]["templateName"] == template["metadata"]["name"]
    assert (
        "record_http_requests_total"
        in template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    )
    assert (
        one(of_kind(prod, "HorizontalPodAutoscaler"))["spec"]["scaleTargetRef"]["kind"] == "Rollout"
    )
    assert not of_kind(prod, "Deployment") or all(
        m["metadata"]["name"] != "record-api" for m in of_kind(prod, "Deployment")
    )


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_come_from_pulumi_secrets_only(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    for secret in of_kind(plan, "Secret"):
        assert secret["stringData"], secret["metadata"]["name"]
        assert set(secret["stringData"].values()) == {"[secret]"}
    for config_map in of_kind(plan, "ConfigMap"):
        for key, value in config_map["data"].items():
            assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key), key
            assert "://" not in value or "@" not in value.split("://", 1)[1].split("/", 1)[0], key
    for resource in plan.resources:
        text = repr(resource["inputs"])
        assert "offline-placeholder-secret-" not in text, resource["name"]


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_controllers_are_installed_with_helm(plans: dict[str, Plan], stack: str) -> None:
    charts = {r["inputs"]["chart"] for r in plans[stack].of_type("kubernetes:helm.sh/v3:Release")}
    assert {
        "aws-load-balancer-controller",
        "metrics-server",
        "keda",
        "kube-prometheus-stack",
    } <= charts
    assert ("argo-rollouts" in charts) == bool(of_kind(plans[stack], "Rollout"))


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_eks_has_irsa_and_encrypted_secrets(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    cluster = one(plan.of_type("aws:eks/cluster:Cluster"))["inputs"]
    # Public only to the stack's deploy CIDRs (tests/infra/test_cluster.py).
    assert cluster["vpcConfig"]["endpointPrivateAccess"] is True
    assert "0.0.0.0/0" not in cluster["vpcConfig"]["publicAccessCidrs"]
    one(plan.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider"))
    assert plan.of_type("aws:eks/nodeGroup:NodeGroup")
    roles = {
        r["inputs"]["name"]: r["inputs"]
        for r in plan.of_type("aws:iam/role:Role")
        if "name" in r["inputs"]
    }
    api_trust = roles[f"record-{stack}-api"]["assumeRolePolicy"]
    assert f"system:serviceaccount:record-{stack}:record-api" in api_trust
    policies = {
        r["name"]: r["inputs"]["policy"] for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
    }
    api_policy = policies[f"record-{stack}-api"]
    assert "/recordings/*" in api_policy
    assert '"s3:*"' not in api_policy
    assert "secretsmanager" not in api_policy
    assert "secretsmanager:GetSecretValue" in policies[f"record-{stack}-migrate"]


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_the_worker_may_purge_a_deleted_orgs_objects(plans: dict[str, Plan], stack: str) -> None:
    import json

    policies = {
        r["name"]: json.loads(r["inputs"]["policy"])
        for r in plans[stack].of_type("aws:iam/rolePolicy:RolePolicy")
    }
    statements = {s["Sid"]: s for s in policies[f"record-{stack}-worker"]["Statement"]}
    # worker/purge.py: DeleteObjects (s3:DeleteObject per key), aborting uploads in progress.
    assert {"s3:DeleteObject", "s3:AbortMultipartUpload"} <= set(statements["Objects"]["Action"])
    assert statements["Objects"]["Resource"].endswith("/recordings/*")
    assert statements["ListUploads"]["Action"] == "s3:ListBucketMultipartUploads"
    assert "s3:DeleteObjectVersion" not in json.dumps(policies[f"record-{stack}-worker"])


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_cloudwatch_alarms_page_through_sns(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    topic = one(plan.of_type("aws:sns/topic:Topic"))
    alarms = plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    namespaces = {a["inputs"]["namespace"] for a in alarms}
    assert namespaces == {"AWS/RDS", "AWS/ElastiCache", "AWS/ApplicationELB"}
    for alarm in alarms:
        assert alarm["inputs"]["alarmActions"], alarm["name"]
        assert all(topic["inputs"]["name"] in arn for arn in alarm["inputs"]["alarmActions"])
    am = one(of_kind(plan, "AlertmanagerConfig"))
    assert am["spec"]["receivers"][0]["snsConfigs"][0]["topicARN"].endswith(topic["inputs"]["name"])


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_monitoring_objects_ship(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    one(of_kind(plan, "ServiceMonitor"))
    one(of_kind(plan, "PodMonitor"))
    rule = one(of_kind(plan, "PrometheusRule"))
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"RecordApiErrorBudgetFastBurn", "RecordSearchLatencyHigh"} <= alerts
    dashboards = [
        m
        for m in of_kind(plan, "ConfigMap")
        if m["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 2


def test_preview_reuses_the_base_stack(plans: dict[str, Plan]) -> None:
    plan = plans["preview"]
    one(plan.of_type("pulumi:pulumi:StackReference"))
    for absent in (
        "aws:rds/instance:Instance",
        "aws:eks/cluster:Cluster",
        "aws:ec2/vpc:Vpc",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:s3/bucket:Bucket",
    ):
        assert not plan.of_type(absent), absent
    namespace = one(of_kind(plan, "Namespace"))
    assert namespace["metadata"]["name"] == "record-pr-0"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Its database is made in the base's provisioning namespace (infra/provisioner.py).
    job = one(
        m
        for m in of_kind(plan, "Job")
        if m["metadata"]["namespace"] == "record-staging-db-provisioning"
    )
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DB_NAME"] == "record_pr_0"
    config = one(m for m in of_kind(plan, "ConfigMap") if m["metadata"]["name"] == "record-config")
    assert config["data"]["S3_PREFIX"] == "previews/pr-0/"


def test_canary_analysis_queries_app_metrics(plans: dict[str, Plan]) -> None:
    from tests.monitoring.conftest import TARGET_LABELS, selectors

    template = one(of_kind(plans["prod"], "AnalysisTemplate"))
    query = template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    found = selectors(query)
    assert found
    assert {name for name, _ in found} == {"record_http_requests_total"}
    for _, labels in found:
        assert labels <= {"status", *TARGET_LABELS}


@pytest.mark.parametrize("stack", [s for s in STACKS if s != "preview"])
def test_abandoned_uploads_do_not_pile_up(plans: dict[str, Plan], stack: str) -> None:
    import json

    resources = plans[stack].resources
    lifecycle = one([r for r in resources if r["type"].endswith(":BucketLifecycleConfiguration")])
    rules = {rule["id"]: rule for rule in lifecycle["inputs"]["rules"]}
    assert rules["abort-incomplete-multipart"]["abortIncompleteMultipartUpload"] == {
        "daysAfterInitiation": 7
    }
    staged = rules["expire-abandoned-direct-uploads"]
    # The tag direct uploads are signed with (app.kit.storage.STAGING_TAGGING).
    from app.kit.storage import STAGING_TAG_KEY

    assert staged["filter"] == {"tag": {"key": STAGING_TAG_KEY, "value": "1"}}
    assert staged["status"] == "Enabled"
    assert staged["expiration"]["days"] <= 7
    api_policy = one(
        [
            r
            for r in resources
            if r["type"] == "aws:iam/rolePolicy:RolePolicy" and r["name"].endswith("-api")
        ]
    )
    actions = json.loads(api_policy["inputs"]["policy"])["Statement"][0]["Action"]
    assert "s3:PutObjectTagging" in actions
