"""The worker: its Deployment, its disruption budget and KEDA's scaling on the job queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from app.kit.roles import LoginRoles
from infra import k8s as kube
from infra.config import WorkloadsConfig
from infra.pods import (
    DB_SECRETS,
    SECRETS_AS_ENV_SKIP,
    SMTP_SECRET,
    SMTP_SECRET_KEYS,
    WORKER_METRICS_PORT,
    Pods,
    child_options,
    fingerprint,
)

# The ScaledObject counts jobs waiting or running, through the one view KEDA's login may read
# (migration 0008).
QUEUE_DEPTH_QUERY = "SELECT jobs FROM app_queue_depth"
# KEDA's operator has no RDS CA bundle (the app image's PGSSLROOTCERT is not in its image) and
# its scaler takes no sslrootcert: TLS without verifying the server. What a man in the middle
# inside the VPC could take is a password that reads one number (app/kit/roles.py).
KEDA_SSLMODE = "require"


@dataclass
class WorkerArgs:
    pods: Pods
    workloads: WorkloadsConfig
    provider: pulumi.ProviderResource
    # The namespace and the Secrets its pods read.
    depends_on: list[pulumi.Resource]
    # Its Deployment waits for the migration Job as well; KEDA's objects need only the namespace.
    deployment_depends_on: list[pulumi.Resource]
    db_host: pulumi.Input[str]
    db_port: pulumi.Input[int]
    db_name: str
    db_app_user: str
    # Rolls the worker when the SMTP credentials change (see _deployment).
    smtp_password: pulumi.Input[str]
    # The component that parented these objects before the split (Workloads), for aliases.
    old_parent: pulumi.Resource | None = None


class Worker(pulumi.ComponentResource):
    deployment: pulumi.CustomResource

    def __init__(
        self, name: str, args: WorkerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Worker", name, None, opts)
        self.args = args
        pods = args.pods
        opts_ns = child_options(self, args.provider, args.depends_on, args.old_parent)
        self.deployment = pods.apply(
            "worker",
            self._deployment(),
            child_options(self, args.provider, args.deployment_depends_on, args.old_parent),
        )
        pods.pdb("worker", {"maxUnavailable": 1}, opts_ns)
        self._keda(opts_ns)
        self.register_outputs({})

    def _deployment(self) -> dict[str, Any]:
        pods = self.args.pods
        container = pods.container(
            "worker",
            ["record", "worker"],
            cpu=("500m", "2"),
            memory=("1Gi", "2Gi"),
            db_secret=DB_SECRETS["worker"],
            ports=[{"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}],
            env=[
                {"name": key, "valueFrom": {"secretKeyRef": {"name": SMTP_SECRET, "key": key}}}
                for key in SMTP_SECRET_KEYS
            ],
        )
        pod = pods.pod(
            "worker",
            [container],
            # A job interrupted by a drain is retried elsewhere; give it time to finish first.
            terminationGracePeriodSeconds=300,
            topologySpreadConstraints=pods.spread("worker"),
        )
        skips = {
            "checkov.io/skip1": SECRETS_AS_ENV_SKIP,
            "checkov.io/skip2": (
                "CKV_K8S_8=The worker serves no HTTP: it blocks on LISTEN/NOTIFY and "
                "procrastinate's stalled-job recovery re-runs the work of a hung worker"
            ),
            "checkov.io/skip3": "CKV_K8S_9=As CKV_K8S_8: no endpoint to probe for readiness",
        }
        pod["metadata"]["annotations"] = {
            **skips,
            # Environment from a Secret is read at start only: new SMTP credentials (a rotated
            # key) change this and so roll the worker before the old key is deleted.
            "record.dev/smtp-credentials": fingerprint(self.args.smtp_password),
        }
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": pods.meta("record-worker", "worker", skips),
            "spec": {
                # No replicas: KEDA owns the count (down to zero when idle where configured).
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": kube.selector(pods.project, "worker")},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": pod,
            },
        }

    def _keda(self, opts: pulumi.ResourceOptions) -> None:
        a, cfg, pods = self.args, self.args.workloads, self.args.pods
        # KEDA's operator, not a Record pod, opens this connection: its own login, and each
        # setting as its postgresql scaler takes it (host, port, ... and a password), not the
        # app's DATABASE_URL, whose sslrootcert names a file only the app image has.
        pods.apply(
            "worker-keda-auth",
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "TriggerAuthentication",
                "metadata": pods.meta("record-worker-db", "worker"),
                "spec": {
                    "secretTargetRef": [
                        {"parameter": "password", "name": DB_SECRETS["keda"], "key": "password"}
                    ]
                },
            },
            opts,
        )
        pods.apply(
            "worker-scaler",
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": pods.meta("record-worker", "worker"),
                "spec": {
                    "scaleTargetRef": {"name": "record-worker"},
                    "minReplicaCount": cfg.worker_min_replicas,
                    "maxReplicaCount": cfg.worker_max_replicas,
                    "pollingInterval": 15,
                    "cooldownPeriod": 300,
                    "triggers": [
                        {
                            "type": "postgresql",
                            "metadata": {
                                "host": a.db_host,
                                "port": pulumi.Output.from_input(a.db_port).apply(
                                    lambda port: str(int(port))
                                ),
                                "userName": LoginRoles(a.db_app_user).keda,
                                "dbName": a.db_name,
                                "sslmode": KEDA_SSLMODE,
                                "query": QUEUE_DEPTH_QUERY,
                                # One replica per `concurrency` jobs in flight.
                                "targetQueryValue": str(cfg.worker_concurrency),
                                "activationTargetQueryValue": "0",
                            },
                            "authenticationRef": {"name": "record-worker-db"},
                        }
                    ],
                },
            },
            opts,
        )
