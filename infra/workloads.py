"""Workloads: Record's namespace on Kubernetes and the workloads in it.

This component owns what every workload shares (the namespace, its ServiceAccounts, the
settings ConfigMap and Secrets, the NetworkPolicies) and composes one component per workload
over the pod helpers of ``infra/pods.py``: the migration Job (``infra/migration.py``), the API
(``infra/api.py``, with ``infra/rollout.py`` for a canary), the worker (``infra/worker.py``) and
the local model server (``infra/model_server.py``). Those objects were this component's own
children before; each keeps its name, and an alias to its old parent keeps a stack from
replacing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from app.kit.roles import LoginRoles
from infra import k8s as kube
from infra.api import Api, ApiArgs, IngressGroup
from infra.config import ProjectConfig, RolloutConfig, WorkloadsConfig
from infra.mail import MailSettings
from infra.migration import MigrationJob, MigrationJobArgs
from infra.model_server import ModelServer, ModelServerArgs
from infra.pods import (
    API_PORT,
    DB_SECRETS,
    MODEL_PORT,
    RDS_CA_BUNDLE,
    SMTP_SECRET,
    WORKER_METRICS_PORT,
    Pods,
    database_url,
    role_password,
)
from infra.worker import Worker, WorkerArgs

# The component the API's AnalysisTemplate belonged to before it joined the Rollout's
# (infra/rollout.py): its alias names that parent by URN, as it is created after this one.
MONITORING_COMPONENT = "record:infra:Monitoring"


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
    # The ALB the API's Ingress joins: a preview's, its base's (infra/api.py). None: its own.
    ingress_group: IngressGroup | None = None


class Workloads(pulumi.ComponentResource):
    namespace: str
    ingress: k8s.networking.v1.Ingress
    # The API's Deployment, or its Rollout.
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
        self.pods = Pods(project=p, namespace=ns, image=args.api_image)
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
            # Error reports say which install they come from (the settings' environment is
            # "production" on every stack).
            "SENTRY_ENVIRONMENT": p.stack,
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

        # A base stack's from its config, a preview's its own Valkey user's (infra/stack.py).
        if cfg.cache_auth_token is None:
            raise ValueError("workloads.cache_auth_token: the pods need a Valkey password")
        token: pulumi.Output[str] = pulumi.Output.secret(cfg.cache_auth_token)
        redis_url = pulumi.Output.all(args.cache_host, args.cache_user, token).apply(
            lambda a: (
                f"rediss://{quote(str(a[1]), safe='')}:{quote(str(a[2]), safe='')}@{a[0]}:6379/0"
            )
        )
        secret_data: dict[str, Any] = {"REDIS_URL": pulumi.Output.secret(redis_url)}
        if cfg.sentry_dsn is not None:
            secret_data["SENTRY_DSN"] = pulumi.Output.secret(cfg.sentry_dsn)
        if cfg.openai_api_key is not None:
            secret_data["OPENAI_API_KEY"] = pulumi.Output.secret(cfg.openai_api_key)
        if cfg.model_server_api_key is not None:
            # The model server checks it; the API and the worker send it (same Secret, envFrom).
            model_key: pulumi.Output[str] = pulumi.Output.secret(cfg.model_server_api_key)
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
        # Every object of the workloads waits for the namespace (and the controllers' CRDs).
        in_namespace = [*args.depends_on, namespace]
        self.migration = MigrationJob(
            name,
            MigrationJobArgs(
                pods=self.pods,
                provider=args.provider,
                depends_on=[*in_namespace, namespace, *config_deps],
                db_host=args.db_host,
                db_port=args.db_port,
                db_name=args.db_name,
                db_app_user=args.db_app_user,
                db_master_secret_arn=args.db_master_secret_arn,
                db_secret=cfg.db_app_password,
                old_parent=self,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        ).job
        # Every rollout of the API waits for the schema it needs: Pulumi awaits the Job's
        # completion before it creates or updates anything that depends on it.
        after_migration = [*in_namespace, namespace, *config_deps, self.migration]
        api = Api(
            name,
            ApiArgs(
                pods=self.pods,
                workloads=cfg,
                rollout=args.rollout,
                provider=args.provider,
                ingress_group=args.ingress_group or self._own_ingress_group(),
                depends_on=in_namespace,
                deployment_depends_on=after_migration,
                old_parent=self,
                analysis_old_parent=pulumi.create_urn(name, MONITORING_COMPONENT),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.api = api.workload
        self.ingress = api.ingress
        Worker(
            name,
            WorkerArgs(
                pods=self.pods,
                workloads=cfg,
                provider=args.provider,
                depends_on=in_namespace,
                deployment_depends_on=after_migration,
                db_host=args.db_host,
                db_port=args.db_port,
                db_name=args.db_name,
                db_app_user=args.db_app_user,
                smtp_password=args.mail.smtp_password,
                old_parent=self,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        if cfg.use_local_models:
            # The API image has no models: the model server runs the EXTRAS=ai build.
            assert args.models_image is not None
            ModelServer(
                name,
                ModelServerArgs(
                    pods=self.pods,
                    provider=args.provider,
                    depends_on=in_namespace,
                    image=args.models_image,
                    old_parent=self,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self._network_policies(opts_ns)
        self.register_outputs({"namespace": ns})

    # -- helpers ---------------------------------------------------------------------------

    def _apply(
        self, name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        return self.pods.apply(name, manifest, opts)

    def _meta(
        self,
        name: pulumi.Input[str],
        component: str | None,
        annotations: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self.pods.meta(name, component, annotations)

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

    def _own_ingress_group(self) -> IngressGroup:
        """A base stack's ALB: a group of its own, named after it, with its certificate."""
        certificate = self.args.workloads.certificate_arn
        if certificate is None:
            raise ValueError("workloads.certificate_arn: a base stack's ALB needs one")
        return IngressGroup(name=self.args.project.prefix, certificate_arn=certificate)

    def _db_secrets(self) -> list[pulumi.CustomResource]:
        roles = LoginRoles(self.args.db_app_user)
        secret = self.args.workloads.db_app_password
        # WorkloadsConfig refuses a stack without it; None here is a caller's mistake.
        if secret is None:
            raise ValueError("workloads.db_app_password: the logins' passwords derive from it")
        passwords = {role: role_password(secret, role) for role in roles.all}
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

    def _database_url(
        self, role: str, passwords: dict[str, pulumi.Output[str]]
    ) -> pulumi.Output[str]:
        a = self.args
        return database_url(role, passwords[role], a.db_host, a.db_port, a.db_name)

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
