"""The API: its pods (a Deployment, or with ``rollout.canary`` the Rollout of ``infra/rollout.py``),
its Services, the Ingress the ALB is made from, its HPA and its disruption budget.

Only public paths reach the ALB; ``/metrics`` stays inside the cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import k8s as kube
from infra.config import RolloutConfig, WorkloadsConfig
from infra.pods import API_PORT, DB_SECRETS, SECRETS_AS_ENV_SKIP, Pods, child_options
from infra.rollout import (
    API_CANARY_SERVICE,
    API_SERVICE_PORT,
    API_STABLE_SERVICE,
    INGRESS_NAME,
    ROLLOUT_NAME,
    ApiRollout,
    ApiRolloutArgs,
)

# Paths the ALB routes. Everything else (/metrics, /livez, /readyz) answers only in-cluster.
PUBLIC_PATHS = (
    ("/api", "Prefix"),
    ("/s", "Prefix"),
    # /docs and its assets (/docs/assets/...): they answer 404 unless API_DOCS_ENABLED.
    ("/docs", "Prefix"),
    ("/openapi.json", "Exact"),
)
API_SERVICE = ROLLOUT_NAME
# alb.ingress.kubernetes.io/group.order: the ALB matches the rules of a lower order first, so a
# base stack's rules come before those of the previews that share its ALB.
BASE_GROUP_ORDER = 0
PREVIEW_GROUP_ORDER = 100


@dataclass(frozen=True)
class IngressGroup:
    """The ALB an Ingress joins (``group.name``: one ALB per group) and what it brings.

    A base stack's Ingress owns the ALB: its name, attributes and tags. A preview's joins the
    base's group with its own host rule and certificate and nothing of the ALB's: the load
    balancer controller refuses a group whose Ingresses disagree on those."""

    name: pulumi.Input[str]
    certificate_arn: pulumi.Input[str]
    owns_load_balancer: bool = True
    order: int = BASE_GROUP_ORDER


# A pod stopping: the preStop pause (the ALB keeps sending for a few seconds after the pod leaves
# the endpoints), then SIGTERM and gunicorn's graceful timeout for in-flight requests (a chat
# stream runs ~30 s; GUNICORN_GRACEFUL_TIMEOUT, read by app/gunicorn_conf.py), then gunicorn's
# own exit. The grace period covers all three, or the kubelet kills requests still running.
API_PRESTOP_SECONDS = 15
API_GRACEFUL_TIMEOUT_SECONDS = 30
API_GRACE_PERIOD_SECONDS = API_PRESTOP_SECONDS + API_GRACEFUL_TIMEOUT_SECONDS + 15
# The ALB closes a connection idle this long; gunicorn must not close one sooner, or the ALB
# may send a request on a connection the pod is closing and answer 502 (AWS's advice for
# targets: a keep-alive timeout above the load balancer's idle timeout).
ALB_IDLE_TIMEOUT_SECONDS = 120
API_KEEPALIVE_SECONDS = ALB_IDLE_TIMEOUT_SECONDS + 5


@dataclass
class ApiArgs:
    pods: Pods
    workloads: WorkloadsConfig
    rollout: RolloutConfig
    provider: pulumi.ProviderResource
    ingress_group: IngressGroup
    # The namespace (and the CRDs of the controllers).
    depends_on: list[pulumi.Resource]
    # What its pods wait for: the settings, the Secrets and the migration Job.
    deployment_depends_on: list[pulumi.Resource]
    # The component that parented these objects before the split (Workloads), and the one
    # that parented the AnalysisTemplate (Monitoring, by URN), for aliases.
    old_parent: pulumi.Resource | None = None
    analysis_old_parent: pulumi.Input[str] | None = None


class Api(pulumi.ComponentResource):
    service: str
    ingress: k8s.networking.v1.Ingress
    # The Deployment, or the Rollout.
    workload: pulumi.CustomResource

    def __init__(
        self, name: str, args: ApiArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Api", name, None, opts)
        self.args = args
        self.service = API_SERVICE
        pods, cfg = args.pods, args.workloads
        opts_ns = child_options(self, args.provider, args.depends_on, args.old_parent)
        after_migration = child_options(
            self, args.provider, args.deployment_depends_on, args.old_parent
        )
        template = self._pod_template()
        if args.rollout.canary:
            canary = ApiRollout(
                name,
                ApiRolloutArgs(
                    pods=pods,
                    rollout=args.rollout,
                    provider=args.provider,
                    depends_on=args.depends_on,
                    rollout_depends_on=args.deployment_depends_on,
                    template=template,
                    old_parent=args.old_parent,
                    analysis_old_parent=args.analysis_old_parent,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.workload = canary.rollout
            api_kind, api_version = "Rollout", "argoproj.io/v1alpha1"
        else:
            self.workload = pods.apply("api", self._deployment(template), after_migration)
            api_kind, api_version = "Deployment", "apps/v1"

        self._services(opts_ns)
        ingress = pods.apply("ingress", self._ingress(), after_migration)
        # Monitoring reads the ALB's name from its status.
        assert isinstance(ingress, k8s.networking.v1.Ingress)
        self.ingress = ingress
        pods.apply(
            "api-hpa",
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": pods.meta(API_SERVICE, "api"),
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": api_version,
                        "kind": api_kind,
                        "name": API_SERVICE,
                    },
                    "minReplicas": cfg.api_replicas,
                    "maxReplicas": cfg.api_max_replicas,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": 65},
                            },
                        }
                    ],
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": 300,
                            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
                        }
                    },
                },
            },
            after_migration,
        )
        pods.pdb(
            "api", {"minAvailable": 1} if cfg.api_replicas > 1 else {"maxUnavailable": 1}, opts_ns
        )
        self.register_outputs({"service": self.service})

    def _deployment(self, template: dict[str, Any]) -> dict[str, Any]:
        pods = self.args.pods
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": pods.meta(API_SERVICE, "api", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}),
            # No replicas: the HPA owns the count (minReplicas is the floor).
            "spec": {
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": kube.selector(pods.project, "api")},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
                },
                "template": template,
            },
        }

    def _pod_template(self) -> dict[str, Any]:
        pods, cfg = self.args.pods, self.args.workloads
        command = [
            "gunicorn",
            # gunicorn calls the factory (it has no --factory flag).
            "app.main:create_app()",
            "-c",
            "python:app.gunicorn_conf",
            # uvicorn.workers is deprecated since uvicorn 0.30; gunicorn_conf names the same.
            "-k",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            str(cfg.api_workers),
            "--bind",
            f"0.0.0.0:{API_PORT}",
        ]
        probe = {"port": "http", "scheme": "HTTP"}
        container = pods.container(
            "api",
            command,
            cpu=("500m", "2"),
            memory=("512Mi", "1Gi"),
            db_secret=DB_SECRETS["api"],
            ports=[{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}],
            startupProbe={
                "httpGet": {"path": "/livez", **probe},
                "periodSeconds": 2,
                "failureThreshold": 30,
            },
            livenessProbe={
                "httpGet": {"path": "/livez", **probe},
                "periodSeconds": 10,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            },
            readinessProbe={
                "httpGet": {"path": "/readyz", **probe},
                "periodSeconds": 5,
                "timeoutSeconds": 2,
                "failureThreshold": 2,
            },
            # The ALB keeps sending to a pod for a few seconds after it leaves the endpoints;
            # sleeping first lets those requests land before gunicorn starts draining.
            lifecycle={"preStop": {"sleep": {"seconds": API_PRESTOP_SECONDS}}},
            # The one source of the graceful timeout: no --graceful-timeout flag to disagree.
            env=[
                {"name": "GUNICORN_GRACEFUL_TIMEOUT", "value": str(API_GRACEFUL_TIMEOUT_SECONDS)},
                {"name": "GUNICORN_KEEPALIVE", "value": str(API_KEEPALIVE_SECONDS)},
            ],
        )
        return pods.pod(
            "api",
            [container],
            terminationGracePeriodSeconds=API_GRACE_PERIOD_SECONDS,
            topologySpreadConstraints=pods.spread("api"),
        )

    def _services(self, opts: pulumi.ResourceOptions) -> None:
        pods = self.args.pods
        services = [("api-service", API_SERVICE, "api")]
        if self.args.rollout.canary:
            # Not labelled component=api: the ServiceMonitor scrapes each pod once, through
            # record-api, not again through the Services Argo narrows to one pod hash.
            services += [
                ("api-stable-service", API_STABLE_SERVICE, "api-stable"),
                ("api-canary-service", API_CANARY_SERVICE, "api-canary"),
            ]
        port = {"name": "http", "port": API_SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
        for resource, name, component in services:
            pods.apply(
                resource,
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": pods.meta(name, component),
                    "spec": {
                        "type": "ClusterIP",
                        "selector": kube.selector(pods.project, "api"),
                        "ports": [port],
                    },
                },
                opts,
            )

    def _ingress(self) -> dict[str, Any]:
        pods, cfg, group = self.args.pods, self.args.workloads, self.args.ingress_group
        p = pods.project
        # The same on every Ingress of the group (the listeners are the group's).
        annotations: dict[str, pulumi.Input[str]] = {
            "alb.ingress.kubernetes.io/scheme": "internet-facing",
            "alb.ingress.kubernetes.io/target-type": "ip",
            "alb.ingress.kubernetes.io/group.name": group.name,
            "alb.ingress.kubernetes.io/group.order": str(group.order),
            "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
            "alb.ingress.kubernetes.io/ssl-redirect": "443",
            # Each Ingress's certificate joins the HTTPS listener's (the ALB picks by SNI).
            "alb.ingress.kubernetes.io/certificate-arn": group.certificate_arn,
            "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            "alb.ingress.kubernetes.io/healthcheck-path": "/readyz",
        }
        if group.owns_load_balancer:
            annotations |= {
                "alb.ingress.kubernetes.io/load-balancer-name": p.prefix[:32],
                "alb.ingress.kubernetes.io/load-balancer-attributes": ",".join(
                    [
                        "routing.http.drop_invalid_header_fields.enabled=true",
                        f"deletion_protection.enabled={'true' if p.production else 'false'}",
                        f"idle_timeout.timeout_seconds={ALB_IDLE_TIMEOUT_SECONDS}",
                    ]
                ),
                "alb.ingress.kubernetes.io/tags": ",".join(f"{k}={v}" for k, v in p.tags.items()),
            }
        # With a canary the ALB forwards by the action Argo writes on this Ingress
        # (alb.ingress.kubernetes.io/actions.record-api), weighted across stable and canary.
        port = {"name": "use-annotation"} if self.args.rollout.canary else {"name": "http"}
        backend = {"service": {"name": API_SERVICE, "port": port}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": pods.meta(INGRESS_NAME, "api", annotations),
            "spec": {
                "ingressClassName": "alb",
                "tls": [{"hosts": [cfg.domain]}],
                "rules": [
                    {
                        "host": cfg.domain,
                        "http": {
                            "paths": [
                                {"path": path, "pathType": kind, "backend": backend}
                                for path, kind in PUBLIC_PATHS
                            ]
                        },
                    }
                ],
            },
        }
