"""Monitoring: scrape config, SLO alerts, dashboards, Alertmanager routing, CloudWatch alarms.

Prometheus rules live in ``monitoring/rules`` (tested with promtool) and dashboards in
``monitoring/dashboards.py``; this block ships both into the cluster. What Prometheus cannot
see from inside the cluster (RDS, ElastiCache, the ALB) is watched by CloudWatch alarms that
publish to the same SNS topic Alertmanager pages through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra import k8s as kube
from infra.common import child, policy, tags
from infra.config import MonitoringConfig, ProjectConfig

RULES_FILE = Path(__file__).resolve().parent.parent / "monitoring" / "rules" / "record.rules.yaml"


def load_rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES_FILE.read_text())["groups"])


def alerts_in_namespace(groups: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The rules with ``namespace`` on every alert. Alertmanager routes an AlertmanagerConfig's
    alerts by that label (OnNamespace), and the SLO expressions sum it away."""
    return [
        {
            **group,
            "rules": [
                {**rule, "labels": {**rule.get("labels", {}), "namespace": namespace}}
                if "alert" in rule
                else rule
                for rule in group["rules"]
            ],
        }
        for group in groups
    ]


@dataclass
class MonitoringArgs:
    project: ProjectConfig
    monitoring: MonitoringConfig
    namespace: str
    provider: pulumi.ProviderResource
    topic_name: str
    db_identifier: pulumi.Input[str]
    cache_cluster_ids: list[pulumi.Output[str]]
    ingress: k8s.networking.v1.Ingress
    depends_on: list[pulumi.Resource]
    alertmanager_role: aws.iam.Role | None = None


class Monitoring(pulumi.ComponentResource):
    topic_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Monitoring", name, None, opts)
        self.args = args
        p = args.project
        self.k8s_opts = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        topic = self._alerting_topic()
        self.topic_arn = topic.arn
        self._scrape()
        self._rules()
        if args.monitoring.grafana_enabled:
            self._dashboards()
        self._alertmanager_routing()
        self._cloudwatch_alarms(topic)
        self.register_outputs({"topic_arn": self.topic_arn, "prefix": p.prefix})

    def _apply(self, name: str, manifest: dict[str, Any]) -> pulumi.CustomResource:
        return kube.apply(f"{self.args.project.prefix}-{name}", manifest, self.k8s_opts)

    def _meta(self, name: str, **extra_labels: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.args.namespace,
            "labels": {**kube.labels(self.args.project, "monitoring"), **extra_labels},
        }

    def _alerting_topic(self) -> aws.sns.Topic:
        p = self.args.project
        account = _account_id()
        # CloudWatch cannot publish to a topic under the AWS-managed SNS key: this key lets it.
        key = aws.kms.Key(
            f"{p.prefix}-alerts",
            description=f"{p.prefix} alert topic",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=account.apply(
                lambda account_id: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "Account",
                                "Effect": "Allow",
                                "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
                                "Action": "kms:*",
                                "Resource": "*",
                            },
                            {
                                "Sid": "CloudWatchAlarms",
                                "Effect": "Allow",
                                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                                "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                                "Resource": "*",
                            },
                        ],
                    }
                )
            ),
            tags=tags(p, f"{p.prefix}-alerts"),
            opts=child(self),
        )
        topic = aws.sns.Topic(
            f"{p.prefix}-alerts",
            name=self.args.topic_name,
            kms_master_key_id=key.id,
            tags=tags(p, self.args.topic_name),
            opts=child(self),
        )
        if self.args.alertmanager_role is not None:
            # Publishing to a topic under a customer key is a KMS call made as the publisher:
            # sns:Publish alone is refused (KMSAccessDenied), so no page would ever leave.
            aws.iam.RolePolicy(
                f"{p.prefix}-alertmanager-alerts-key",
                role=self.args.alertmanager_role.id,
                policy=policy(
                    {
                        "Sid": "AlertTopicKey",
                        "Effect": "Allow",
                        "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                        "Resource": key.arn,
                    }
                ),
                opts=child(self),
            )
        if self.args.monitoring.alert_email:
            aws.sns.TopicSubscription(
                f"{p.prefix}-alerts-email",
                topic=topic.arn,
                protocol="email",
                endpoint=self.args.monitoring.alert_email,
                opts=child(self),
            )
        return topic

    def _scrape(self) -> None:
        p = self.args.project
        self._apply(
            "api-servicemonitor",
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": self._meta("record-api"),
                "spec": {
                    "selector": {"matchLabels": kube.selector(p, "api")},
                    "namespaceSelector": {"matchNames": [self.args.namespace]},
                    # The canary analysis compares the new pods with the stable ones by hash.
                    "podTargetLabels": ["rollouts-pod-template-hash"],
                    "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
                },
            },
        )
        self._apply(
            "worker-podmonitor",
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PodMonitor",
                "metadata": self._meta("record-worker"),
                "spec": {
                    "selector": {"matchLabels": kube.selector(p, "worker")},
                    "namespaceSelector": {"matchNames": [self.args.namespace]},
                    "podMetricsEndpoints": [
                        {"port": "metrics", "path": "/metrics", "interval": "30s"}
                    ],
                },
            },
        )

    def _rules(self) -> None:
        self._apply(
            "prometheusrule",
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": self._meta("record-slo"),
                "spec": {"groups": alerts_in_namespace(load_rule_groups(), self.args.namespace)},
            },
        )

    def _dashboards(self) -> None:
        from monitoring.dashboards import dashboards

        for filename, model in dashboards().items():
            self._apply(
                f"dashboard-{model['uid']}",
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        **self._meta(f"dashboard-{model['uid']}", grafana_dashboard="1"),
                        "annotations": {"grafana_folder": "Record"},
                    },
                    "data": {filename: json.dumps(model, sort_keys=True)},
                },
            )

    def _alertmanager_routing(self) -> None:
        p = self.args.project
        receivers: list[dict[str, Any]] = [
            {
                "name": "sns",
                "snsConfigs": [
                    {
                        "topicARN": pulumi.Output.concat(
                            "arn:aws:sns:",
                            p.region,
                            ":",
                            _account_id(),
                            ":",
                            self.args.topic_name,
                        ),
                        "sigv4": {"region": p.region},
                        "subject": "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }}",
                        "sendResolved": True,
                    }
                ],
            },
            # Alerts of the namespace that are neither pages nor tickets (the chart's "info",
            # CPUThrottlingHigh among them) go nowhere.
            {"name": "none"},
        ]
        # Record's own rules say "page" and "ticket"; the chart's rules about Record's pods
        # (KubePodCrashLooping, ...) say "critical" and "warning".
        routes: list[dict[str, Any]] = [
            {
                "receiver": "sns",
                "matchers": [{"name": "severity", "value": "page|critical", "matchType": "=~"}],
                "repeatInterval": "1h",
            },
        ]
        tickets = [{"name": "severity", "value": "ticket|warning", "matchType": "=~"}]
        if self.args.monitoring.alert_webhook_url is not None:
            secret_name = "record-alert-webhook"
            self._apply(
                "alert-webhook",
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": self._meta(secret_name),
                    "type": "Opaque",
                    "stringData": {
                        "url": pulumi.Output.secret(self.args.monitoring.alert_webhook_url)
                    },
                },
            )
            receivers.append(
                {
                    "name": "tickets",
                    "webhookConfigs": [
                        {"urlSecret": {"name": secret_name, "key": "url"}, "sendResolved": True}
                    ],
                }
            )
            routes.append({"receiver": "tickets", "matchers": tickets, "repeatInterval": "12h"})
        else:
            routes.append({"receiver": "sns", "matchers": tickets, "repeatInterval": "12h"})
        self._apply(
            "alertmanagerconfig",
            {
                "apiVersion": "monitoring.coreos.com/v1alpha1",
                "kind": "AlertmanagerConfig",
                "metadata": self._meta("record", **{"record.dev/alerting": "true"}),
                "spec": {
                    # The operator adds namespace="<this namespace>" to this route (OnNamespace).
                    "route": {
                        "receiver": "none",
                        "groupBy": ["alertname", "namespace"],
                        "groupWait": "30s",
                        "groupInterval": "5m",
                        "repeatInterval": "4h",
                        "routes": routes,
                    },
                    "receivers": receivers,
                    # A page silences the ticket for the same SLO.
                    "inhibitRules": [
                        {
                            "sourceMatch": [{"name": "severity", "value": "page"}],
                            "targetMatch": [{"name": "severity", "value": "ticket"}],
                            "equal": ["slo"],
                        }
                    ],
                },
            },
        )

    def _cloudwatch_alarms(self, topic: aws.sns.Topic) -> None:
        a = self.args
        p = a.project
        alarms: list[tuple[str, str, str, dict[str, Any], str, float, int, str]] = [
            # name, namespace, metric, dimensions, statistic, threshold, periods, comparison
            (
                "rds-cpu",
                "AWS/RDS",
                "CPUUtilization",
                {"DBInstanceIdentifier": a.db_identifier},
                "Average",
                80,
                3,
                "GreaterThanThreshold",
            ),
            (
                "rds-free-storage",
                "AWS/RDS",
                "FreeStorageSpace",
                {"DBInstanceIdentifier": a.db_identifier},
                "Minimum",
                10 * 1024**3,
                1,
                "LessThanThreshold",
            ),
            (
                "rds-freeable-memory",
                "AWS/RDS",
                "FreeableMemory",
                {"DBInstanceIdentifier": a.db_identifier},
                "Minimum",
                256 * 1024**2,
                3,
                "LessThanThreshold",
            ),
            (
                "rds-read-latency",
                "AWS/RDS",
                "ReadLatency",
                {"DBInstanceIdentifier": a.db_identifier},
                "Average",
                0.02,
                3,
                "GreaterThanThreshold",
            ),
            (
                "rds-connections",
                "AWS/RDS",
                "DatabaseConnections",
                {"DBInstanceIdentifier": a.db_identifier},
                "Maximum",
                400,
                3,
                "GreaterThanThreshold",
            ),
        ]
        # AWS/ElastiCache publishes these per member cluster (node), by CacheClusterId: an
        # alarm on any other dimension watches a metric with no data, which notBreaching reads
        # as OK for ever.
        for number, cluster_id in enumerate(a.cache_cluster_ids, start=1):
            node = {"CacheClusterId": cluster_id}
            alarms += [
                (
                    f"cache-engine-cpu-{number:03d}",
                    "AWS/ElastiCache",
                    "EngineCPUUtilization",
                    node,
                    "Average",
                    80,
                    3,
                    "GreaterThanThreshold",
                ),
                (
                    f"cache-memory-{number:03d}",
                    "AWS/ElastiCache",
                    "DatabaseMemoryUsagePercentage",
                    node,
                    "Maximum",
                    85,
                    3,
                    "GreaterThanThreshold",
                ),
                (
                    f"cache-evictions-{number:03d}",
                    "AWS/ElastiCache",
                    "Evictions",
                    node,
                    "Sum",
                    100,
                    3,
                    "GreaterThanThreshold",
                ),
            ]
        # The ALB belongs to the load balancer controller; its name is known once the Ingress
        # is admitted, so the ALB alarms read it from the ingress status.
        alb_suffix = a.ingress.status.apply(
            lambda _status: (
                aws.lb.get_load_balancer(tags={"ingress.k8s.aws/stack": p.prefix}).arn_suffix
            )
        )
        alarms += [
            (
                "alb-5xx",
                "AWS/ApplicationELB",
                "HTTPCode_ELB_5XX_Count",
                {"LoadBalancer": alb_suffix},
                "Sum",
                50,
                3,
                "GreaterThanThreshold",
            ),
            (
                "alb-target-5xx",
                "AWS/ApplicationELB",
                "HTTPCode_Target_5XX_Count",
                {"LoadBalancer": alb_suffix},
                "Sum",
                50,
                3,
                "GreaterThanThreshold",
            ),
            (
                "alb-target-latency",
                "AWS/ApplicationELB",
                "TargetResponseTime",
                {"LoadBalancer": alb_suffix},
                "p95",
                1.0,
                5,
                "GreaterThanThreshold",
            ),
        ]
        for short, namespace, metric, dims, stat, threshold, periods, comparison in alarms:
            name = f"{p.prefix}-{short}"
            percentile = stat.startswith("p")
            aws.cloudwatch.MetricAlarm(
                name,
                name=name,
                namespace=namespace,
                metric_name=metric,
                dimensions=dims,
                statistic=None if percentile else stat,
                extended_statistic=stat if percentile else None,
                period=60,
                evaluation_periods=periods,
                threshold=threshold,
                comparison_operator=comparison,
                treat_missing_data="notBreaching",
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                alarm_description=f"Record {p.stack}: {metric} on {namespace}",
                tags=tags(p, name),
                opts=child(self),
            )


def _account_id() -> pulumi.Output[str]:
    return aws.get_caller_identity_output().account_id
