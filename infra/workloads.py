"""Workloads: the API, the worker, the migration Job and the local model server on Kubernetes.

The pod spec is the same hardened shape everywhere (non-root, read-only root file system, no
privilege escalation, no capabilities, RuntimeDefault seccomp). Only public paths reach the
ALB; ``/metrics`` stays inside the cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi

from app.kit.roles import LoginRoles
from infra import k8s as kube
from infra.config import ProjectConfig, RolloutConfig, WorkloadsConfig
from infra.mail import MailSettings

API_PORT = 8000
MODEL_PORT = 8100
WORKER_METRICS_PORT = 9100
UID = 10001
# Paths the ALB routes. Everything else (/metrics, /livez, /readyz) answers only in-cluster.
PUBLIC_PATHS = (
    ("/api", "Prefix"),
    ("/s", "Prefix"),
    # /docs and its assets (/docs/assets/...): they answer 404 unless API_DOCS_ENABLED.
    ("/docs", "Prefix"),
    ("/openapi.json", "Exact"),
)
INGRESS_NAME = "record"
RDS_CA_BUNDLE = "/etc/ssl/certs/rds-global-bundle.pem"
# The ScaledObject counts jobs waiting or running, through the one view KEDA's login may read
# (migration 0008).
QUEUE_DEPTH_QUERY = "SELECT jobs FROM app_queue_depth"
# KEDA's operator has no RDS CA bundle (the app image's PGSSLROOTCERT is not in its image) and
# its scaler takes no sslrootcert: TLS without verifying the server. What a man in the middle
# inside the VPC could take is a password that reads one number (app/kit/roles.py).
KEDA_SSLMODE = "require"
# Which Secret holds each component's DATABASE_URL: the API's and the worker's log in as roles
# that own nothing; only the migration Job's logs in as the owner (app/kit/roles.py).
DB_SECRETS = {
    "api": "record-db-api",
    "worker": "record-db-worker",
    "migrate": "record-db-migrate",
    # Not a DATABASE_URL: the password alone, for KEDA's TriggerAuthentication.
    "keda": "record-db-keda",
}
SECRETS_AS_ENV_SKIP = (
    "CKV_K8S_35=The app reads its settings from the environment (pydantic-settings, one "
    "settings object); the Secret is namespaced, encrypted with KMS in etcd and mounted only "
    "into Record's own pods"
)
# Index builds on a large table take minutes (1M x 384 HNSW: 382 s); Kubernetes stops the
# migration Job after this long, and Pulumi waits a little longer so that it reports the Job's
# own failure (DeadlineExceeded) rather than a timeout of its own while the Job still runs.
MIGRATION_DEADLINE_SECONDS = 3600
MIGRATION_AWAIT_MARGIN_SECONDS = 300
# With a canary, the ALB splits traffic by weight between these two Services (Argo Rollouts
# points their selectors at the stable and the canary pods); the Ingress names the root Service
# `record-api`, whose action annotation Argo writes, and which still selects every API pod.
API_STABLE_SERVICE = "record-api-stable"
API_CANARY_SERVICE = "record-api-canary"
API_SERVICE_PORT = 80
# What `pulumi up` waits for on the Rollout (a custom resource, so nothing by default): Argo
# reports Healthy once every step passed and the new pods are the stable set. An aborted canary
# stays Degraded and an inconclusive one Paused, so the wait runs out and the update fails.
ROLLOUT_WAIT_FOR = "jsonpath={.status.phase}=Healthy"
# Beyond its pause, each traffic step (and the final promotion) waits for new pods to start,
# pass /readyz and register as ALB targets (ip targets trail readiness by tens of seconds);
# the promotion also waits out Argo's 30 s scale-down delay of the old pods.
ROLLOUT_STEP_ALLOWANCE_SECONDS = 180
# Only the worker sends mail, so only the worker sees the SMTP credentials (secretKeyRef).
SMTP_SECRET = "record-smtp"
SMTP_SECRET_KEYS = ("SMTP_USERNAME", "SMTP_PASSWORD")


def rollout_timeout_seconds(rollout: RolloutConfig) -> int:
    """How long `pulumi up` waits for the Rollout: every pause, and an allowance for each
    traffic step and the promotion. The background analysis runs alongside the pauses."""
    steps = len(rollout.steps)
    return steps * rollout.pause_seconds + (steps + 1) * ROLLOUT_STEP_ALLOWANCE_SECONDS


@dataclass
class WorkloadsArgs:
    project: ProjectConfig
    workloads: WorkloadsConfig
    rollout: RolloutConfig
    namespace: str
    provider: pulumi.ProviderResource
    vpc_cidr: pulumi.Input[str]
    db_host: pulumi.Input[str]
    db_port: pulumi.Input[int]
    db_name: str
    db_app_user: str
    # None on a preview: no bootstrap init container and no master secret in its namespace;
    # its database comes from the base's provisioner (infra/provisioner.py) and the migration
    # Job only migrates.
    db_master_secret_arn: pulumi.Input[str] | None
    cache_host: pulumi.Input[str]
    # The Valkey user the pods log in as (its password: workloads.cache_auth_token), and the
    # prefix of every key they write (REDIS_KEY_PREFIX; "" on a base stack). Always db 0.
    cache_user: pulumi.Input[str]
    cache_key_prefix: str
    bucket_name: pulumi.Input[str]
    bucket_kms_key_arn: pulumi.Input[str]
    object_prefix: str
    api_role_arn: pulumi.Input[str]
    worker_role_arn: pulumi.Input[str]
    migrate_role_arn: pulumi.Input[str] | None
    mail: MailSettings
    depends_on: list[pulumi.Resource]
    # Digest-pinned references (infra/images.py): the API/worker/migration image, and the
    # model server's (built with EXTRAS=ai) when workloads.useLocalModels.
    api_image: pulumi.Input[str]
    models_image: pulumi.Input[str] | None = None


class Workloads(pulumi.ComponentResource):
    namespace: str
    api_service: str
    ingress: pulumi.CustomResource
    api: pulumi.CustomResource
    migration: pulumi.CustomResource

    def __init__(
        self, name: str, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Workloads", name, None, opts)
        self.args = args
        p, cfg = args.project, args.workloads
        ns = args.namespace
        self.namespace = ns
        self.api_service = "record-api"
        base = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )

        namespace = self._apply(
            "namespace",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "labels": {
                        **kube.labels(p),
                        # Pod Security Admission refuses any pod weaker than "restricted".
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/audit": "restricted",
                        "pod-security.kubernetes.io/warn": "restricted",
                    },
                },
            },
            base,
        )
        opts_ns = pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(depends_on=[namespace]))
        self.opts_ns = opts_ns

        for component, role_arn in (
            ("api", args.api_role_arn),
            ("worker", args.worker_role_arn),
            ("migrate", args.migrate_role_arn),
            ("model-server", None),
        ):
            annotations = {"eks.amazonaws.com/role-arn": role_arn} if role_arn else {}
            self._apply(
                f"sa-{component}",
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": self._meta(f"record-{component}", component, annotations),
                    # IRSA projects its own token; the Kubernetes API token is never needed.
                    "automountServiceAccountToken": False,
                },
                opts_ns,
            )

        model_url = f"http://record-model-server.{ns}.svc.cluster.local:{MODEL_PORT}/v1"
        settings = {
            "ENVIRONMENT": "production",
            "LOG_LEVEL": cfg.log_level,
            "PUBLIC_URL": cfg.public_url,
            "CORS_ORIGINS": cfg.public_url,
            # The ALB is the only proxy in front of the API; it sits inside the VPC.
            "TRUSTED_PROXIES": args.vpc_cidr,
            "SIGNUP_MODE": cfg.signup_mode,
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": args.bucket_name,
            "S3_PREFIX": args.object_prefix,
            # The bucket's own key: with aws:kms and no key id, S3 would use aws/s3 instead.
            "S3_KMS_KEY_ID": args.bucket_kms_key_arn,
            "AWS_REGION": p.region,
            "OPENAI_BASE_URL": model_url if cfg.use_local_models else cfg.openai_base_url,
            "PROMETHEUS_MULTIPROC_DIR": "/run/metrics",
            "HF_HUB_OFFLINE": "1",
            "PGSSLROOTCERT": RDS_CA_BUNDLE,
            "WORKER_CONCURRENCY": str(cfg.worker_concurrency),
            # A long meeting's pieces side by side against a hosted API; the in-cluster model
            # server is CPU-bound, so one at a time there.
            "TRANSCRIPTION_CONCURRENCY": "1" if cfg.use_local_models else "4",
            "WEB_CONCURRENCY": str(cfg.api_workers),
            "BIND": f"0.0.0.0:{API_PORT}",
            # Every pod renders mail the same way (links under PUBLIC_URL); only the worker
            # sends it and holds the SMTP credentials (SMTP_SECRET).
            "MAIL_BACKEND": "smtp",
            "MAIL_FROM": args.mail.mail_from,
            "SMTP_HOST": args.mail.smtp_host,
            "SMTP_PORT": str(args.mail.smtp_port),
            "SMTP_STARTTLS": "true" if args.mail.starttls else "false",
        }
        if args.cache_key_prefix:
            settings["REDIS_KEY_PREFIX"] = args.cache_key_prefix
        for key, value in (
            ("OIDC_ISSUER", cfg.oidc_issuer),
            ("OIDC_JWKS_URL", cfg.oidc_jwks_url),
            ("OIDC_AUDIENCE", cfg.oidc_audience),
        ):
            if value:
                settings[key] = value
        config_map = self._apply(
            "config",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self._meta("record-config", None),
                "data": settings,
            },
            opts_ns,
        )

        redis_url = pulumi.Output.all(
            args.cache_host, args.cache_user, pulumi.Output.secret(cfg.cache_auth_token)
        ).apply(
            lambda a: (
                f"rediss://{quote(str(a[1]), safe='')}:{quote(str(a[2]), safe='')}@{a[0]}:6379/0"
            )
        )
        secret_data: dict[str, Any] = {"REDIS_URL": pulumi.Output.secret(redis_url)}
        if cfg.openai_api_key is not None:
            secret_data["OPENAI_API_KEY"] = pulumi.Output.secret(cfg.openai_api_key)
        if cfg.model_server_api_key is not None:
            # The model server checks it; the API and the worker send it (same Secret, envFrom).
            model_key = pulumi.Output.secret(cfg.model_server_api_key)
            secret_data["MODEL_SERVER_API_KEY"] = model_key
            secret_data["OPENAI_API_KEY"] = model_key
        secret = self._apply(
            "secret",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self._meta("record-secrets", None),
                "type": "Opaque",
                "stringData": secret_data,
            },
            opts_ns,
        )
        config_deps = [config_map, secret, *self._db_secrets(), self._smtp_secret(opts_ns)]
        # A new image is a new Job: Jobs are immutable, and the name says which build migrated.
        digest = pulumi.Output.from_input(args.api_image).apply(
            lambda image: hashlib.sha256(image.encode()).hexdigest()[:10]
        )

        self.migration = self._apply(
            "migrate",
            self._migration_job(pulumi.Output.concat("record-migrate-", digest)),
            pulumi.ResourceOptions.merge(
                opts_ns,
                pulumi.ResourceOptions(
                    depends_on=[namespace, *config_deps],
                    delete_before_replace=False,
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{MIGRATION_DEADLINE_SECONDS + MIGRATION_AWAIT_MARGIN_SECONDS}s",
                        update=f"{MIGRATION_DEADLINE_SECONDS + MIGRATION_AWAIT_MARGIN_SECONDS}s",
                    ),
                ),
            ),
        )
        # Every rollout of the API waits for the schema it needs: Pulumi awaits the Job's
        # completion before it creates or updates anything that depends on it.
        after_migration = pulumi.ResourceOptions.merge(
            opts_ns, pulumi.ResourceOptions(depends_on=[namespace, *config_deps, self.migration])
        )

        api_pod = self._api_pod_template()
        if args.rollout.canary:
            self.api = self._apply("api", self._api_rollout(api_pod), after_migration)
            api_kind, api_version = "Rollout", "argoproj.io/v1alpha1"
        else:
            self.api = self._apply(
                "api",
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": self._meta(
                        "record-api", "api", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}
                    ),
                    # No replicas: the HPA owns the count (minReplicas is the floor).
                    "spec": {
                        "revisionHistoryLimit": 5,
                        "selector": {"matchLabels": kube.selector(p, "api")},
                        "strategy": {
                            "type": "RollingUpdate",
                            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
                        },
                        "template": api_pod,
                    },
                },
                after_migration,
            )
            api_kind, api_version = "Deployment", "apps/v1"

        self._api_services(opts_ns)
        self.ingress = self._apply("ingress", self._ingress(), after_migration)
        self._apply(
            "api-hpa",
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": self._meta("record-api", "api"),
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": api_version,
                        "kind": api_kind,
                        "name": "record-api",
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
        self._pdb("api", {"minAvailable": 1} if cfg.api_replicas > 1 else {"maxUnavailable": 1})

        self._apply("worker", self._worker_deployment(), after_migration)
        self._pdb("worker", {"maxUnavailable": 1})
        self._keda(opts_ns)

        if cfg.use_local_models:
            self._model_server(opts_ns)
        self._network_policies(opts_ns)
        self.register_outputs({"namespace": ns})

    # -- helpers ---------------------------------------------------------------------------

    def _apply(
        self, name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        return kube.apply(f"{self.args.project.prefix}-{name}", manifest, opts)

    def _meta(
        self,
        name: pulumi.Input[str],
        component: str | None,
        annotations: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": kube.labels(self.args.project, component),
        }
        if annotations:
            meta["annotations"] = annotations
        return meta

    def _api_services(self, opts: pulumi.ResourceOptions) -> None:
        services = [("api-service", self.api_service, "api")]
        if self.args.rollout.canary:
            # Not labelled component=api: the ServiceMonitor scrapes each pod once, through
            # record-api, not again through the Services Argo narrows to one pod hash.
            services += [
                ("api-stable-service", API_STABLE_SERVICE, "api-stable"),
                ("api-canary-service", API_CANARY_SERVICE, "api-canary"),
            ]
        port = {"name": "http", "port": API_SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
        for resource, name, component in services:
            self._apply(
                resource,
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": self._meta(name, component),
                    "spec": {
                        "type": "ClusterIP",
                        "selector": kube.selector(self.args.project, "api"),
                        "ports": [port],
                    },
                },
                opts,
            )

    def _smtp_secret(self, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
        mail = self.args.mail
        return self._apply(
            "smtp-secret",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self._meta(SMTP_SECRET, "worker"),
                "type": "Opaque",
                "stringData": {
                    "SMTP_USERNAME": pulumi.Output.secret(mail.smtp_username),
                    "SMTP_PASSWORD": pulumi.Output.secret(mail.smtp_password),
                },
            },
            opts,
        )

    def _pdb(self, component: str, budget: dict[str, Any]) -> None:
        self._apply(
            f"{component}-pdb",
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self._meta(f"record-{component}", component),
                "spec": {
                    "selector": {"matchLabels": kube.selector(self.args.project, component)},
                    **budget,
                },
            },
            self.opts_ns,
        )

    def _db_secrets(self) -> list[pulumi.CustomResource]:
        roles = LoginRoles(self.args.db_app_user)
        passwords = {role: self._role_password(role) for role in roles.all}
        return [
            self._db_secret(
                DB_SECRETS["api"], {"DATABASE_URL": self._database_url(roles.api, passwords)}
            ),
            self._db_secret(
                DB_SECRETS["worker"],
                {"DATABASE_URL": self._database_url(roles.worker, passwords)},
            ),
            # The bootstrap sets every login's password; the migrations run as the owner. A
            # preview's Job only migrates: the owner's URL alone.
            self._db_secret(
                DB_SECRETS["migrate"],
                {
                    "DATABASE_URL": self._database_url(roles.owner, passwords),
                    **(
                        {
                            "DB_OWNER_PASSWORD": passwords[roles.owner],
                            "DB_API_PASSWORD": passwords[roles.api],
                            "DB_WORKER_PASSWORD": passwords[roles.worker],
                            "DB_KEDA_PASSWORD": passwords[roles.keda],
                        }
                        if self.args.db_master_secret_arn is not None
                        else {}
                    ),
                },
            ),
            self._db_secret(DB_SECRETS["keda"], {"password": passwords[roles.keda]}),
        ]

    def _role_password(self, role: str) -> pulumi.Output[str]:
        """Each login role's password, derived from the stack's one Pulumi secret
        (``dbAppPassword``): the API's or the worker's, if it leaks, says nothing of the
        owner's."""
        return pulumi.Output.secret(
            pulumi.Output.from_input(self.args.workloads.db_app_password).apply(
                lambda secret: hmac.new(
                    str(secret).encode(), f"record-db-login:{role}".encode(), hashlib.sha256
                ).hexdigest()
            )
        )

    def _database_url(
        self, role: str, passwords: dict[str, pulumi.Output[str]]
    ) -> pulumi.Output[str]:
        a = self.args
        return pulumi.Output.secret(
            pulumi.Output.all(a.db_host, a.db_port, passwords[role]).apply(
                lambda v: (
                    f"postgresql://{role}:{quote(str(v[2]), safe='')}@{v[0]}:{int(v[1])}"
                    f"/{a.db_name}?sslmode=verify-full&sslrootcert={RDS_CA_BUNDLE}"
                )
            )
        )

    def _db_secret(self, name: str, data: dict[str, Any]) -> pulumi.CustomResource:
        return self._apply(
            name.removeprefix("record-"),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self._meta(name, None),
                "type": "Opaque",
                "stringData": data,
            },
            self.opts_ns,
        )

    def _container(
        self,
        name: str,
        command: list[str],
        cpu: tuple[str, str],
        memory: tuple[str, str],
        db_secret: str | None = None,
        *,
        image: pulumi.Input[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        db = [{"secretRef": {"name": db_secret}}] if db_secret else []
        return {
            "name": name,
            "image": image if image is not None else self.args.api_image,
            "imagePullPolicy": "Always",
            "command": command,
            "envFrom": [
                {"configMapRef": {"name": "record-config"}},
                {"secretRef": {"name": "record-secrets"}},
                *db,
            ],
            "resources": {
                "requests": {"cpu": cpu[0], "memory": memory[0]},
                "limits": {"cpu": cpu[1], "memory": memory[1]},
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": UID,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [
                # An emptyDir of the pod's own, not the node's /tmp.
                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                {"name": "metrics", "mountPath": "/run/metrics"},
            ],
            **extra,
        }

    def _pod(
        self,
        component: str,
        containers: list[dict[str, Any]],
        **extra: Any,
    ) -> dict[str, Any]:
        p = self.args.project
        return {
            "metadata": {
                "labels": kube.labels(p, component),
                "annotations": {"checkov.io/skip1": SECRETS_AS_ENV_SKIP},
            },
            "spec": {
                "serviceAccountName": f"record-{component}",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": UID,
                    "runAsGroup": UID,
                    "fsGroup": UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": containers,
                "volumes": [
                    {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    # prometheus-client's multiprocess files: one per gunicorn worker.
                    {"name": "metrics", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                ],
                **extra,
            },
        }

    def _spread(self, component: str) -> list[dict[str, Any]]:
        match = {"matchLabels": kube.selector(self.args.project, component)}
        zone_policy = "DoNotSchedule" if self.args.project.production else "ScheduleAnyway"
        return [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": zone_policy,
                "labelSelector": match,
            },
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": match,
            },
        ]

    def _api_pod_template(self) -> dict[str, Any]:
        cfg = self.args.workloads
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
            "--graceful-timeout",
            "30",
        ]
        probe = {"port": "http", "scheme": "HTTP"}
        container = self._container(
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
            lifecycle={"preStop": {"sleep": {"seconds": 15}}},
        )
        return self._pod(
            "api",
            [container],
            terminationGracePeriodSeconds=60,
            topologySpreadConstraints=self._spread("api"),
        )

    def _api_rollout(self, pod: dict[str, Any]) -> dict[str, Any]:
        ro = self.args.rollout
        steps: list[dict[str, Any]] = []
        for weight in ro.steps:
            steps.append({"setWeight": weight})
            steps.append({"pause": {"duration": f"{ro.pause_seconds}s"}})
        annotations = {
            "checkov.io/skip1": SECRETS_AS_ENV_SKIP,
            "pulumi.com/waitFor": ROLLOUT_WAIT_FOR,
            "pulumi.com/timeoutSeconds": str(rollout_timeout_seconds(ro)),
        }
        return {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": self._meta("record-api", "api", annotations),
            "spec": {
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": kube.selector(self.args.project, "api")},
                "template": pod,
                "strategy": {
                    "canary": {
                        "maxSurge": "25%",
                        "maxUnavailable": 0,
                        # setWeight is the share of requests the ALB sends to the canary, not
                        # a ratio of pods (Argo's ALB traffic routing).
                        "stableService": API_STABLE_SERVICE,
                        "canaryService": API_CANARY_SERVICE,
                        "trafficRouting": {
                            "alb": {
                                "ingress": INGRESS_NAME,
                                "rootService": self.api_service,
                                "servicePort": API_SERVICE_PORT,
                            }
                        },
                        "analysis": {
                            "templates": [{"templateName": "record-api-success-rate"}],
                            "startingStep": 1,
                            "args": [
                                {
                                    "name": "canary-hash",
                                    "valueFrom": {"podTemplateHashValue": "Latest"},
                                }
                            ],
                        },
                        "steps": steps,
                    }
                },
            },
        }

    def _ingress(self) -> dict[str, Any]:
        p, cfg = self.args.project, self.args.workloads
        annotations = {
            "alb.ingress.kubernetes.io/scheme": "internet-facing",
            "alb.ingress.kubernetes.io/target-type": "ip",
            "alb.ingress.kubernetes.io/group.name": p.prefix,
            "alb.ingress.kubernetes.io/load-balancer-name": p.prefix[:32],
            "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
            "alb.ingress.kubernetes.io/ssl-redirect": "443",
            "alb.ingress.kubernetes.io/certificate-arn": cfg.certificate_arn,
            "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            "alb.ingress.kubernetes.io/healthcheck-path": "/readyz",
            "alb.ingress.kubernetes.io/load-balancer-attributes": ",".join(
                [
                    "routing.http.drop_invalid_header_fields.enabled=true",
                    f"deletion_protection.enabled={'true' if p.production else 'false'}",
                    "idle_timeout.timeout_seconds=120",
                ]
            ),
            "alb.ingress.kubernetes.io/tags": ",".join(f"{k}={v}" for k, v in p.tags.items()),
        }
        # With a canary the ALB forwards by the action Argo writes on this Ingress
        # (alb.ingress.kubernetes.io/actions.record-api), weighted across stable and canary.
        port = {"name": "use-annotation"} if self.args.rollout.canary else {"name": "http"}
        backend = {"service": {"name": self.api_service, "port": port}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": self._meta(INGRESS_NAME, "api", annotations),
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

    def _migration_job(self, name: pulumi.Input[str]) -> dict[str, Any]:
        a = self.args
        bootstrap_env = [
            {"name": "DB_HOST", "value": a.db_host},
            {"name": "DB_PORT", "value": pulumi.Output.from_input(a.db_port).apply(str)},
            {"name": "DB_NAME", "value": a.db_name},
            {"name": "DB_OWNER_USER", "value": a.db_app_user},
            {"name": "DB_MASTER_SECRET_ARN", "value": a.db_master_secret_arn},
        ]
        bootstrap = self._container(
            "db-bootstrap",
            ["python", "-m", "infra.db_bootstrap"],
            cpu=("100m", "500m"),
            memory=("128Mi", "256Mi"),
            db_secret=DB_SECRETS["migrate"],
            env=bootstrap_env,
        )
        # alembic upgrade head: creates the pgvector extension, tables and the HNSW / GIN
        # indexes. On a large table build those out of band first (DEPLOYMENT.md).
        migrate = self._container(
            "migrate",
            ["record", "db", "upgrade"],
            cpu=("250m", "2"),
            memory=("512Mi", "2Gi"),
            db_secret=DB_SECRETS["migrate"],
        )
        init = {"initContainers": [bootstrap]} if a.db_master_secret_arn is not None else {}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self._meta(name, "migrate", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}),
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": MIGRATION_DEADLINE_SECONDS,
                "template": self._pod("migrate", [migrate], **init, restartPolicy="Never"),
            },
        }

    def _worker_deployment(self) -> dict[str, Any]:
        container = self._container(
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
        pod = self._pod(
            "worker",
            [container],
            # A job interrupted by a drain is retried elsewhere; give it time to finish first.
            terminationGracePeriodSeconds=300,
            topologySpreadConstraints=self._spread("worker"),
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
            "record.dev/smtp-credentials": self._fingerprint(self.args.mail.smtp_password),
        }
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self._meta("record-worker", "worker", skips),
            "spec": {
                # No replicas: KEDA owns the count (down to zero when idle where configured).
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": kube.selector(self.args.project, "worker")},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": pod,
            },
        }

    @staticmethod
    def _fingerprint(secret: pulumi.Input[str]) -> pulumi.Output[str]:
        """A short digest of a secret, safe in clear text: 48 bits of SHA-256 of a password
        derived from a random 40-character key say nothing about it, and an annotation must
        not be secret, or the whole Deployment would be one."""
        digest = pulumi.Output.from_input(secret).apply(
            lambda value: hashlib.sha256(str(value).encode()).hexdigest()[:12]
        )
        return pulumi.Output.unsecret(digest)

    def _keda(self, opts: pulumi.ResourceOptions) -> None:
        a, cfg = self.args, self.args.workloads
        # KEDA's operator, not a Record pod, opens this connection: its own login, and each
        # setting as its postgresql scaler takes it (host, port, ... and a password), not the
        # app's DATABASE_URL, whose sslrootcert names a file only the app image has.
        self._apply(
            "worker-keda-auth",
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "TriggerAuthentication",
                "metadata": self._meta("record-worker-db", "worker"),
                "spec": {
                    "secretTargetRef": [
                        {"parameter": "password", "name": DB_SECRETS["keda"], "key": "password"}
                    ]
                },
            },
            opts,
        )
        self._apply(
            "worker-scaler",
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": self._meta("record-worker", "worker"),
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

    def _model_server(self, opts: pulumi.ResourceOptions) -> None:
        p = self.args.project
        # The API image has no models: the model server runs the EXTRAS=ai build.
        assert self.args.models_image is not None
        probe = {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2}
        container = self._container(
            "model-server",
            # The pod's own address; NetworkPolicy admits only the API and the worker.
            ["record", "models", "serve", "--host", "0.0.0.0", "--port", str(MODEL_PORT)],  # noqa: S104
            cpu=("1", "2"),
            memory=("2Gi", "4Gi"),
            image=self.args.models_image,
            ports=[{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}],
            readinessProbe=probe,
            livenessProbe={**probe, "initialDelaySeconds": 30},
        )
        self._apply(
            "model-server",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self._meta(
                    "record-model-server", "model-server", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}
                ),
                "spec": {
                    "replicas": 1,
                    "revisionHistoryLimit": 3,
                    "selector": {"matchLabels": kube.selector(p, "model-server")},
                    "template": self._pod("model-server", [container]),
                },
            },
            opts,
        )
        self._apply(
            "model-server-service",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self._meta("record-model-server", "model-server"),
                "spec": {
                    "type": "ClusterIP",
                    "selector": kube.selector(p, "model-server"),
                    "ports": [{"name": "http", "port": MODEL_PORT, "targetPort": "http"}],
                },
            },
            opts,
        )

    def _network_policies(self, opts: pulumi.ResourceOptions) -> None:
        p, cfg = self.args.project, self.args.workloads
        vpc = {"ipBlock": {"cidr": self.args.vpc_cidr}}

        def tcp(*ports: int) -> list[dict[str, Any]]:
            return [{"protocol": "TCP", "port": port} for port in ports]

        prometheus = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
        data_stores = {"to": [vpc], "ports": tcp(5432, 6379)}
        # S3 (gateway endpoint), STS for IRSA, Secrets Manager, the OpenAI-protocol server.
        https_out = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": tcp(443)}
        # SES's SMTP endpoint (public addresses, STARTTLS): the worker sends every mail.
        smtp_out = {
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
            "ports": tcp(self.args.mail.smtp_port),
        }
        model_out = {
            "to": [{"podSelector": {"matchLabels": kube.selector(p, "model-server")}}],
            "ports": tcp(MODEL_PORT),
        }

        policies: dict[str, dict[str, Any]] = {
            "default-deny": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
            },
            "allow-dns": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                                },
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [
                            {"protocol": "UDP", "port": 53},
                            {"protocol": "TCP", "port": 53},
                        ],
                    }
                ],
            },
            "api": {
                "podSelector": {"matchLabels": kube.selector(p, "api")},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    # The ALB (target type ip) reaches pods from its ENIs inside the VPC.
                    {"from": [vpc], "ports": tcp(API_PORT)},
                    {"from": [prometheus], "ports": tcp(API_PORT)},
                ],
                "egress": [data_stores, https_out, *([model_out] if cfg.use_local_models else [])],
            },
            "worker": {
                "podSelector": {"matchLabels": kube.selector(p, "worker")},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [prometheus], "ports": tcp(WORKER_METRICS_PORT)}],
                "egress": [
                    data_stores,
                    https_out,
                    smtp_out,
                    *([model_out] if cfg.use_local_models else []),
                ],
            },
            "migrate": {
                "podSelector": {"matchLabels": kube.selector(p, "migrate")},
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{"to": [vpc], "ports": tcp(5432)}, https_out],
            },
        }
        if cfg.use_local_models:
            policies["model-server"] = {
                "podSelector": {"matchLabels": kube.selector(p, "model-server")},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": kube.selector(p, "api")}},
                            {"podSelector": {"matchLabels": kube.selector(p, "worker")}},
                        ],
                        "ports": tcp(MODEL_PORT),
                    }
                ],
            }
        for name, spec in policies.items():
            self._apply(
                f"netpol-{name}",
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": self._meta(f"record-{name}", None),
                    "spec": spec,
                },
                opts,
            )
