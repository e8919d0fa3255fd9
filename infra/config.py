"""Typed stack configuration: one dataclass per block, read from ``Pulumi.<stack>.yaml`` once.

Every value the program uses comes through here, is validated here, and fails with a message
that names the config key to fix. A production stack that would lose data on a bad day (no
deletion protection, a single AZ) refuses to build rather than deploy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import pulumi

from infra.presets import PRESETS, SizePreset

NAMESPACE = "record"
_IMAGE_DIGEST = re.compile(r"^[\w.\-/:]+@sha256:[0-9a-f]{64}$")
_IMAGE_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{1,20}$")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_LOCAL_PART = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# A display name goes into the From header as is: no quotes, angle brackets or commas.
_DISPLAY_NAME = re.compile(r"^[\w .'-]{1,64}$")

# Amazon EKS support per Kubernetes minor version: (end of standard support, end of extended
# support), UTC days. From AWS's "Amazon EKS Kubernetes release calendar" (EKS User Guide,
# "Understand the Kubernetes version lifecycle on EKS") for 1.29-1.34; 1.35's row was not on
# the copy we read: its dates follow the calendar's rule (14 + 12 months after its EKS release
# in late January 2026) as endoflife.date's amazon-eks page lists them; check them there. On
# each date the support has ended: extended support is billed from the start of that day, and
# from the second EKS upgrades the control plane by itself. Add a row per EKS release.
EKS_KUBERNETES_SUPPORT: dict[str, tuple[date, date]] = {
    "1.29": (date(2025, 3, 23), date(2026, 3, 23)),
    "1.30": (date(2025, 7, 23), date(2026, 7, 23)),
    "1.31": (date(2025, 11, 26), date(2026, 11, 26)),
    "1.32": (date(2026, 3, 23), date(2027, 3, 23)),
    "1.33": (date(2026, 7, 29), date(2027, 7, 29)),
    "1.34": (date(2026, 12, 2), date(2027, 12, 2)),
    "1.35": (date(2027, 3, 27), date(2028, 3, 27)),
}
# The newest version in the table: in standard support until 2027-03-27.
DEFAULT_KUBERNETES_VERSION = "1.35"


class ConfigError(ValueError):
    """A stack configuration that cannot be deployed, with the key to fix."""


@dataclass(frozen=True)
class ProjectConfig:
    project: str
    stack: str
    owner: str
    cost_centre: str
    region: str
    size: SizePreset
    production: bool
    # A preview stack is one per pull request: its slug keeps their names apart.
    instance: str | None = None

    @property
    def prefix(self) -> str:
        """The name every resource starts with, so two installs live in one account."""
        base = f"{self.project}-{self.stack}"
        return f"{base}-{self.instance}" if self.instance else base

    @property
    def tags(self) -> dict[str, str]:
        return {
            "project": self.project,
            "stack": self.stack,
            "owner": self.owner,
            "cost-centre": self.cost_centre,
            "managed-by": "pulumi",
        }


@dataclass(frozen=True)
class NetworkConfig:
    cidr: str = "10.40.0.0/16"
    az_count: int = 3
    nat_per_az: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    mode: str = "eks"  # "eks" builds one; "existing" deploys into a cluster by kubeconfig
    version: str = DEFAULT_KUBERNETES_VERSION
    # How `pulumi up` reaches the API server it installs charts and workloads through: the
    # public endpoint, open only to these CIDRs (the private one stays on for the nodes) ...
    public_access_cidrs: tuple[str, ...] = ()
    # ... or the private endpoint alone, which only a deploy run inside the VPC can reach.
    private_only: bool = False
    deploy_from_vpc: bool = False
    # "owner/name": with deployFromVpc, the repository whose workflows the in-VPC runner serves.
    runner_repository: str | None = None
    # For mode "existing": where the cluster already lives.
    kubeconfig: pulumi.Input[str] | None = None
    vpc_id: str | None = None
    vpc_cidr: str | None = None
    private_subnet_ids: tuple[str, ...] = ()
    node_security_group_id: str | None = None
    oidc_provider_arn: str | None = None
    oidc_issuer: str | None = None
    # An existing Prometheus (operator) in the cluster: kube-prometheus-stack is not installed.
    existing_prometheus: bool = False
    # A metrics-server already serving metrics.k8s.io (the API's CPU HPA reads it): not installed.
    existing_metrics_server: bool = False


@dataclass(frozen=True)
class DatabaseConfig:
    # The major only: RDS applies minor upgrades itself (infra/database.py).
    engine_version: str = "16"
    instance_class: str = "db.t4g.medium"
    allocated_storage_gb: int = 50
    max_allocated_storage_gb: int = 500
    multi_az: bool = False
    deletion_protection: bool = False
    backup_retention_days: int = 7
    # Index builds (HNSW on 1M x 384 took 382 s with 8 GB); RDS takes kB.
    maintenance_work_mem_kb: int = 1_048_576
    log_min_duration_ms: int = 500
    name: str = "record"
    app_user: str = "record"


@dataclass(frozen=True)
class CacheConfig:
    node_type: str = "cache.t4g.small"
    replicas: int = 1
    engine_version: str = "8.0"
    automatic_failover: bool = False


@dataclass(frozen=True)
class StorageConfig:
    cors_origins: tuple[str, ...] = ()
    noncurrent_version_days: int = 30
    force_destroy: bool = False


@dataclass(frozen=True)
class ImageConfig:
    """Where the workloads' images come from: built and pushed by the program (the default),
    or digest-pinned references built elsewhere (``record:image.prebuilt``, for CI)."""

    # ``repo@sha256:<64 hex>`` each; set, nothing is built or pushed.
    prebuilt_api: str | None = None
    prebuilt_models: str | None = None
    # What the pushed tags name: the commit by default (``git rev-parse``), or CI's own.
    revision: str | None = None

    @property
    def prebuilt(self) -> bool:
        return self.prebuilt_api is not None


@dataclass(frozen=True)
class WorkloadsConfig:
    domain: str
    certificate_arn: str
    api_replicas: int
    api_max_replicas: int
    api_workers: int
    worker_min_replicas: int
    worker_max_replicas: int
    worker_concurrency: int
    use_local_models: bool = False
    openai_base_url: str | None = "https://api.openai.com/v1"
    signup_mode: str = "invite-only"
    log_level: str = "INFO"
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None
    openai_api_key: pulumi.Input[str] | None = None
    # With useLocalModels: the in-cluster model server's own key (MODEL_SERVER_API_KEY there,
    # OPENAI_API_KEY in the API and the worker, which call it).
    model_server_api_key: pulumi.Input[str] | None = None
    db_app_password: pulumi.Input[str] | None = None
    cache_auth_token: pulumi.Input[str] | None = None

    @property
    def public_url(self) -> str:
        return f"https://{self.domain}"


@dataclass(frozen=True)
class MailConfig:
    """Outgoing mail through Amazon SES: the domain identity and who mails come from."""

    domain: str
    from_address: str
    from_name: str = "Record"
    # A custom MAIL FROM (Return-Path) domain under ``domain``, for SPF alignment (DMARC).
    mail_from_subdomain: str | None = None

    @property
    def mail_from(self) -> str:
        """MAIL_FROM as the app sends it: ``Name <address>``."""
        return f"{self.from_name} <{self.from_address}>"

    @property
    def mail_from_domain(self) -> str | None:
        if self.mail_from_subdomain is None:
            return None
        return f"{self.mail_from_subdomain}.{self.domain}"


@dataclass(frozen=True)
class MonitoringConfig:
    alert_email: str | None = None
    alert_webhook_url: pulumi.Input[str] | None = None
    grafana_enabled: bool = True


@dataclass(frozen=True)
class RolloutConfig:
    canary: bool = False
    steps: tuple[int, ...] = (10, 25, 50)
    pause_seconds: int = 120
    min_success_rate: float = 0.99


@dataclass(frozen=True)
class PreviewConfig:
    base_stack: str
    pr_number: int

    @property
    def slug(self) -> str:
        return f"pr-{self.pr_number}"


@dataclass(frozen=True)
class StackConfig:
    project: ProjectConfig
    network: NetworkConfig
    cluster: ClusterConfig
    database: DatabaseConfig
    cache: CacheConfig
    storage: StorageConfig
    workloads: WorkloadsConfig
    monitoring: MonitoringConfig
    rollout: RolloutConfig
    image: ImageConfig = field(default_factory=ImageConfig)
    preview: PreviewConfig | None = None
    # None on a preview stack: it sends through its base stack's identity (infra/preview.py).
    mail: MailConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _obj(cfg: pulumi.Config, key: str) -> dict[str, Any]:
    value = cfg.get_object(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{NAMESPACE}:{key} must be a mapping, got {type(value).__name__}")
    return value


def _pick(block: dict[str, Any], key: str, default: Any, kind: type, where: str) -> Any:
    value = block.get(key, default)
    if value is None:
        return None
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{NAMESPACE}:{where}.{key} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{NAMESPACE}:{where}.{key} must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{NAMESPACE}:{where}.{key} must be a string, got {value!r}")
    return value


def _unknown_keys(block: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(
            f"{NAMESPACE}:{where} has unknown keys {unknown}; allowed: {sorted(allowed)}"
        )


def load(
    project: str | None = None, stack: str | None = None, today: date | None = None
) -> StackConfig:
    """Reads and validates the current stack's config (``pulumi.Config``); ``today`` (UTC) is
    the day the Kubernetes version's support is judged on."""
    cfg = pulumi.Config(NAMESPACE)
    aws_cfg = pulumi.Config("aws")
    project = project or pulumi.get_project()
    stack = stack or pulumi.get_stack()
    if not _STACK_NAME.match(stack):
        raise ConfigError(f"stack name {stack!r} must match {_STACK_NAME.pattern}")

    size_name = cfg.get("size") or "small"
    if size_name not in PRESETS:
        raise ConfigError(f"{NAMESPACE}:size must be one of {sorted(PRESETS)}, got {size_name!r}")
    size = PRESETS[size_name]
    production = cfg.get_bool("production") or False
    owner = cfg.get("owner")
    cost_centre = cfg.get("costCentre")
    if not owner or not cost_centre:
        raise ConfigError(f"{NAMESPACE}:owner and {NAMESPACE}:costCentre are required (tags)")
    proj = ProjectConfig(
        project=project,
        stack=stack,
        owner=owner,
        cost_centre=cost_centre,
        region=aws_cfg.get("region") or "us-east-1",
        size=size,
        production=production,
    )

    network = _network(cfg, proj)
    cluster = _cluster(cfg, proj)
    database = _database(cfg, proj)
    cache = _cache(cfg, proj)
    storage = _storage(cfg, proj)
    workloads = _workloads(cfg, proj)
    image = _image(cfg, workloads)
    monitoring = _monitoring(cfg, proj)
    rollout = _rollout(cfg, proj)
    preview = _preview(cfg, proj)
    mail = _mail(cfg, proj, preview)
    if preview is None:
        # A preview deploys onto its base stack's cluster and builds none of its own.
        _deploy_path(cluster)
        if cluster.mode == "eks":
            warning = kubernetes_support(cluster.version, today or datetime.now(UTC).date())
            if warning:
                pulumi.log.warn(warning)
    if preview is not None:
        # One stack per pull request: the slug keeps their names apart.
        proj = replace(proj, instance=preview.slug)
    if preview is None and workloads.cache_auth_token is None:
        raise ConfigError(
            f"missing secret {NAMESPACE}:cacheAuthToken "
            "(pulumi config set --secret record:cacheAuthToken ...)"
        )
    config = StackConfig(
        project=proj,
        network=network,
        cluster=cluster,
        database=database,
        cache=cache,
        storage=storage,
        workloads=workloads,
        monitoring=monitoring,
        rollout=rollout,
        image=image,
        preview=preview,
        mail=mail,
    )
    validate_production(config)
    return config


def _network(cfg: pulumi.Config, proj: ProjectConfig) -> NetworkConfig:
    production = proj.production
    net = _obj(cfg, "network")
    _unknown_keys(net, {"cidr", "azCount", "natPerAz"}, "network")
    network = NetworkConfig(
        cidr=_pick(net, "cidr", "10.40.0.0/16", str, "network"),
        az_count=_pick(net, "azCount", 3, int, "network"),
        nat_per_az=_pick(net, "natPerAz", production, bool, "network"),
    )
    if network.az_count < 2 or network.az_count > 3:
        raise ConfigError(f"{NAMESPACE}:network.azCount must be 2 or 3, got {network.az_count}")
    return network


def _cluster(cfg: pulumi.Config, proj: ProjectConfig) -> ClusterConfig:
    cl = _obj(cfg, "cluster")
    for old in ("publicEndpoint", "adminCidrs"):
        if old in cl:
            raise ConfigError(
                f"{NAMESPACE}:cluster.{old} is gone: set cluster.publicAccessCidrs "
                "(or cluster.privateOnly with cluster.deployFromVpc); see DEPLOYMENT.md"
            )
    _unknown_keys(
        cl,
        {
            "mode",
            "version",
            "publicAccessCidrs",
            "privateOnly",
            "deployFromVpc",
            "runnerRepository",
            "vpcId",
            "vpcCidr",
            "privateSubnetIds",
            "nodeSecurityGroupId",
            "oidcProviderArn",
            "oidcIssuer",
            "existingPrometheus",
            "existingMetricsServer",
        },
        "cluster",
    )
    cluster = ClusterConfig(
        mode=_pick(cl, "mode", "eks", str, "cluster"),
        version=_pick(cl, "version", DEFAULT_KUBERNETES_VERSION, str, "cluster"),
        public_access_cidrs=_cidrs(cl.get("publicAccessCidrs", ()), "cluster.publicAccessCidrs"),
        private_only=_pick(cl, "privateOnly", False, bool, "cluster"),
        deploy_from_vpc=_pick(cl, "deployFromVpc", False, bool, "cluster"),
        runner_repository=_pick(cl, "runnerRepository", None, str, "cluster"),
        kubeconfig=cfg.get_secret("kubeconfig"),
        vpc_id=cl.get("vpcId"),
        vpc_cidr=cl.get("vpcCidr"),
        private_subnet_ids=tuple(cl.get("privateSubnetIds", ())),
        node_security_group_id=cl.get("nodeSecurityGroupId"),
        oidc_provider_arn=cl.get("oidcProviderArn"),
        oidc_issuer=cl.get("oidcIssuer"),
        existing_prometheus=_pick(cl, "existingPrometheus", False, bool, "cluster"),
        existing_metrics_server=_pick(cl, "existingMetricsServer", False, bool, "cluster"),
    )
    if cluster.mode not in {"eks", "existing"}:
        raise ConfigError(f"{NAMESPACE}:cluster.mode must be 'eks' or 'existing'")
    if cluster.mode == "existing":
        missing = [
            key
            for key, value in {
                "kubeconfig (secret)": cluster.kubeconfig,
                "cluster.vpcId": cluster.vpc_id,
                "cluster.vpcCidr": cluster.vpc_cidr,
                "cluster.privateSubnetIds": cluster.private_subnet_ids,
                "cluster.nodeSecurityGroupId": cluster.node_security_group_id,
                "cluster.oidcProviderArn": cluster.oidc_provider_arn,
                "cluster.oidcIssuer": cluster.oidc_issuer,
            }.items()
            if not value
        ]
        if missing:
            raise ConfigError(f"cluster.mode 'existing' needs {NAMESPACE}:{', '.join(missing)}")
    return cluster


def _cidrs(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{NAMESPACE}:{where} must be a list of CIDRs, got {value!r}")
    for cidr in value:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise ConfigError(f"{NAMESPACE}:{where}: {cidr!r} is not a CIDR ({exc})") from exc
        if network.prefixlen == 0:
            raise ConfigError(
                f"{NAMESPACE}:{where} must name networks, not {cidr} (the whole internet)"
            )
    return tuple(value)


def _deploy_path(cluster: ClusterConfig) -> None:
    """The program installs charts and workloads through the cluster's API endpoint: a cluster
    it builds must say from where that endpoint is reached."""
    if cluster.mode != "eks":
        if cluster.public_access_cidrs or cluster.private_only or cluster.deploy_from_vpc:
            raise ConfigError(
                f"{NAMESPACE}:cluster.publicAccessCidrs, privateOnly and deployFromVpc are for "
                "mode 'eks': an existing cluster's endpoint is its owner's to set"
            )
        return
    if cluster.private_only:
        if cluster.public_access_cidrs:
            raise ConfigError(
                f"{NAMESPACE}:cluster.privateOnly has no public endpoint: "
                "drop cluster.publicAccessCidrs"
            )
        if not cluster.deploy_from_vpc:
            raise ConfigError(
                f"{NAMESPACE}:cluster.privateOnly needs cluster.deployFromVpc: true, and "
                "`pulumi up` run from inside the VPC (DEPLOYMENT.md, Deploy path)"
            )
        return
    if cluster.deploy_from_vpc:
        raise ConfigError(f"{NAMESPACE}:cluster.deployFromVpc goes with cluster.privateOnly")
    if not cluster.public_access_cidrs:
        raise ConfigError(
            f"{NAMESPACE}:cluster.publicAccessCidrs is required: the CIDRs `pulumi up` runs "
            "from (CI runners, the operators' VPN), or cluster.privateOnly with "
            "cluster.deployFromVpc"
        )


def kubernetes_support(version: str, today: date) -> str | None:
    """Refuses a version EKS no longer supports on ``today``; the warning to print when it is
    past standard support (extended support costs more per cluster hour), else None."""
    if version not in EKS_KUBERNETES_SUPPORT:
        raise ConfigError(
            f"{NAMESPACE}:cluster.version {version!r} is not in the EKS support table "
            f"(infra/config.py EKS_KUBERNETES_SUPPORT): one of {sorted(EKS_KUBERNETES_SUPPORT)}"
        )
    standard_end, extended_end = EKS_KUBERNETES_SUPPORT[version]
    if today >= extended_end:
        raise ConfigError(
            f"{NAMESPACE}:cluster.version {version} left EKS extended support on "
            f"{extended_end.isoformat()}: upgrade one minor version at a time to one in "
            "standard support"
        )
    if today >= standard_end:
        return (
            f"{NAMESPACE}:cluster.version {version} is in EKS extended support since "
            f"{standard_end.isoformat()} (billed extra; auto-upgraded from "
            f"{extended_end.isoformat()}): plan the upgrade"
        )
    return None


def _database(cfg: pulumi.Config, proj: ProjectConfig) -> DatabaseConfig:
    production, size = proj.production, proj.size
    db = _obj(cfg, "database")
    _unknown_keys(
        db,
        {
            "instanceClass",
            "allocatedStorageGb",
            "maxAllocatedStorageGb",
            "multiAz",
            "deletionProtection",
            "backupRetentionDays",
            "maintenanceWorkMemKb",
            "logMinDurationMs",
            "engineVersion",
        },
        "database",
    )
    database = DatabaseConfig(
        engine_version=_pick(db, "engineVersion", "16", str, "database"),
        instance_class=_pick(db, "instanceClass", size.db_instance_class, str, "database"),
        allocated_storage_gb=_pick(db, "allocatedStorageGb", size.db_storage_gb, int, "database"),
        max_allocated_storage_gb=_pick(
            db, "maxAllocatedStorageGb", size.db_storage_gb * 10, int, "database"
        ),
        multi_az=_pick(db, "multiAz", production, bool, "database"),
        deletion_protection=_pick(db, "deletionProtection", production, bool, "database"),
        backup_retention_days=_pick(
            db, "backupRetentionDays", 14 if production else 7, int, "database"
        ),
        maintenance_work_mem_kb=_pick(
            db, "maintenanceWorkMemKb", size.maintenance_work_mem_kb, int, "database"
        ),
        log_min_duration_ms=_pick(db, "logMinDurationMs", 500, int, "database"),
    )
    if not re.fullmatch(r"16(\.\d+)?", database.engine_version):
        raise ConfigError(f"{NAMESPACE}:database.engineVersion must be PostgreSQL 16.x")
    if database.backup_retention_days < 1:
        raise ConfigError(f"{NAMESPACE}:database.backupRetentionDays must be >= 1 (PITR)")
    return database


def _cache(cfg: pulumi.Config, proj: ProjectConfig) -> CacheConfig:
    production, size = proj.production, proj.size
    ca = _obj(cfg, "cache")
    _unknown_keys(ca, {"nodeType", "replicas", "automaticFailover"}, "cache")
    cache = CacheConfig(
        node_type=_pick(ca, "nodeType", size.cache_node_type, str, "cache"),
        replicas=_pick(ca, "replicas", size.cache_replicas, int, "cache"),
        automatic_failover=_pick(ca, "automaticFailover", production, bool, "cache"),
    )
    if cache.automatic_failover and cache.replicas < 1:
        raise ConfigError(f"{NAMESPACE}:cache.automaticFailover needs cache.replicas >= 1")
    return cache


def _storage(cfg: pulumi.Config, proj: ProjectConfig) -> StorageConfig:
    st = _obj(cfg, "storage")
    _unknown_keys(st, {"corsOrigins", "noncurrentVersionDays", "forceDestroy"}, "storage")
    domain = cfg.require("domain")
    storage = StorageConfig(
        cors_origins=tuple(st.get("corsOrigins", (f"https://{domain}",))),
        noncurrent_version_days=_pick(st, "noncurrentVersionDays", 30, int, "storage"),
        force_destroy=_pick(st, "forceDestroy", False, bool, "storage"),
    )
    if any(origin == "*" for origin in storage.cors_origins):
        raise ConfigError(f"{NAMESPACE}:storage.corsOrigins must name origins, not '*'")
    return storage


def _workloads(cfg: pulumi.Config, proj: ProjectConfig) -> WorkloadsConfig:
    size = proj.size
    wl = _obj(cfg, "workloads")
    _unknown_keys(
        wl,
        {
            "apiReplicas",
            "apiMaxReplicas",
            "apiWorkers",
            "workerMinReplicas",
            "workerMaxReplicas",
            "workerConcurrency",
            "useLocalModels",
            "openaiBaseUrl",
            "signupMode",
            "logLevel",
            "oidcIssuer",
            "oidcJwksUrl",
            "oidcAudience",
        },
        "workloads",
    )
    domain = cfg.require("domain")
    use_local = _pick(wl, "useLocalModels", False, bool, "workloads")
    workloads = WorkloadsConfig(
        domain=domain,
        certificate_arn=cfg.require("certificateArn"),
        api_replicas=_pick(wl, "apiReplicas", size.api_replicas, int, "workloads"),
        api_max_replicas=_pick(wl, "apiMaxReplicas", size.api_max_replicas, int, "workloads"),
        api_workers=_pick(wl, "apiWorkers", 2, int, "workloads"),
        worker_min_replicas=_pick(
            wl, "workerMinReplicas", size.worker_min_replicas, int, "workloads"
        ),
        worker_max_replicas=_pick(
            wl, "workerMaxReplicas", size.worker_max_replicas, int, "workloads"
        ),
        # Transcription is CPU-bound: two jobs per 2-CPU worker pod.
        worker_concurrency=_pick(wl, "workerConcurrency", 2, int, "workloads"),
        use_local_models=use_local,
        openai_base_url=None if use_local else wl.get("openaiBaseUrl", "https://api.openai.com/v1"),
        signup_mode=_pick(wl, "signupMode", "invite-only", str, "workloads"),
        log_level=_pick(wl, "logLevel", "INFO", str, "workloads"),
        oidc_issuer=wl.get("oidcIssuer"),
        oidc_jwks_url=wl.get("oidcJwksUrl"),
        oidc_audience=wl.get("oidcAudience"),
        openai_api_key=None if use_local else cfg.require_secret("openaiApiKey"),
        model_server_api_key=cfg.require_secret("modelServerApiKey") if use_local else None,
        db_app_password=cfg.require_secret("dbAppPassword"),
        cache_auth_token=cfg.get_secret("cacheAuthToken"),
    )
    if not workloads.certificate_arn.startswith("arn:aws:acm:"):
        raise ConfigError(f"{NAMESPACE}:certificateArn must be an ACM certificate ARN")
    if workloads.signup_mode not in {"open", "invite-only", "disabled"}:
        raise ConfigError(f"{NAMESPACE}:workloads.signupMode must be open|invite-only|disabled")
    if workloads.api_replicas > workloads.api_max_replicas:
        raise ConfigError(f"{NAMESPACE}:workloads.apiReplicas exceeds apiMaxReplicas")
    if workloads.worker_min_replicas > workloads.worker_max_replicas:
        raise ConfigError(f"{NAMESPACE}:workloads.workerMinReplicas exceeds workerMaxReplicas")
    return workloads


def _image(cfg: pulumi.Config, workloads: WorkloadsConfig) -> ImageConfig:
    raw = cfg.get("image")
    if raw is not None and not raw.lstrip().startswith("{"):
        # The old form: one reference for every process, the model server's included.
        raise ConfigError(
            f"{NAMESPACE}:image is a mapping now: the program builds and pushes the images; "
            "an image built elsewhere goes in image.prebuilt.api (and .models), by digest"
        )
    im = _obj(cfg, "image")
    _unknown_keys(im, {"prebuilt", "revision"}, "image")
    prebuilt = im.get("prebuilt") or {}
    if not isinstance(prebuilt, dict):
        raise ConfigError(f"{NAMESPACE}:image.prebuilt must be a mapping (api, models)")
    _unknown_keys(prebuilt, {"api", "models"}, "image.prebuilt")
    for key, ref in prebuilt.items():
        if not isinstance(ref, str) or not _IMAGE_DIGEST.match(ref):
            raise ConfigError(
                f"{NAMESPACE}:image.prebuilt.{key} must be pinned by digest "
                f"(repo@sha256:<64 hex>), got {ref!r}"
            )
    if prebuilt and "api" not in prebuilt:
        raise ConfigError(f"{NAMESPACE}:image.prebuilt needs api (the API and worker image)")
    if prebuilt and workloads.use_local_models and "models" not in prebuilt:
        raise ConfigError(
            f"{NAMESPACE}:image.prebuilt needs models (built with EXTRAS=ai) "
            "with workloads.useLocalModels"
        )
    revision = _pick(im, "revision", None, str, "image")
    if revision is not None and not _IMAGE_REVISION.match(revision):
        raise ConfigError(
            f"{NAMESPACE}:image.revision must be a tag-safe word (letters, digits, '.', '_', "
            f"'-'), got {revision!r}"
        )
    return ImageConfig(
        prebuilt_api=prebuilt.get("api"),
        prebuilt_models=prebuilt.get("models"),
        revision=revision,
    )


def _monitoring(cfg: pulumi.Config, proj: ProjectConfig) -> MonitoringConfig:
    mon = _obj(cfg, "monitoring")
    _unknown_keys(mon, {"alertEmail", "grafanaEnabled"}, "monitoring")
    monitoring = MonitoringConfig(
        alert_email=mon.get("alertEmail"),
        alert_webhook_url=cfg.get_secret("alertWebhookUrl"),
        grafana_enabled=_pick(mon, "grafanaEnabled", True, bool, "monitoring"),
    )
    return monitoring


def _rollout(cfg: pulumi.Config, proj: ProjectConfig) -> RolloutConfig:
    ro = _obj(cfg, "rollout")
    _unknown_keys(ro, {"canary", "steps", "pauseSeconds", "minSuccessRate"}, "rollout")
    rollout = RolloutConfig(
        canary=_pick(ro, "canary", False, bool, "rollout"),
        steps=tuple(ro.get("steps", (10, 25, 50))),
        pause_seconds=_pick(ro, "pauseSeconds", 120, int, "rollout"),
        min_success_rate=float(ro.get("minSuccessRate", 0.99)),
    )
    if any(not 0 < step < 100 for step in rollout.steps) or list(rollout.steps) != sorted(
        rollout.steps
    ):
        raise ConfigError(f"{NAMESPACE}:rollout.steps must rise within 1..99, got {rollout.steps}")
    return rollout


def _preview(cfg: pulumi.Config, proj: ProjectConfig) -> PreviewConfig | None:
    pv = _obj(cfg, "preview")
    preview = None
    if pv:
        _unknown_keys(pv, {"baseStack", "prNumber"}, "preview")
        preview = PreviewConfig(
            base_stack=_pick(pv, "baseStack", None, str, "preview"),
            pr_number=_pick(pv, "prNumber", None, int, "preview"),
        )
        if not preview.base_stack or preview.pr_number is None or preview.pr_number < 0:
            raise ConfigError(f"{NAMESPACE}:preview needs baseStack and a prNumber >= 0")
        if proj.production:
            raise ConfigError("a preview stack cannot be a production stack")
    return preview


def _mail(
    cfg: pulumi.Config, proj: ProjectConfig, preview: PreviewConfig | None
) -> MailConfig | None:
    ml = _obj(cfg, "mail")
    if preview is not None:
        if ml:
            # One SES identity per base stack: a preview's own would need its own DNS records
            # and its own way out of the sandbox.
            raise ConfigError(
                f"{NAMESPACE}:mail is not for a preview stack: it sends through its base "
                "stack's mail identity"
            )
        return None
    _unknown_keys(ml, {"domain", "fromAddress", "fromName", "mailFromSubdomain"}, "mail")
    # The stack's own host name by default: each stack sends from its own identity, so a
    # staging mistake never spends production's sending reputation.
    domain = (_pick(ml, "domain", None, str, "mail") or cfg.require("domain")).lower()
    if not _HOST_NAME.match(domain):
        raise ConfigError(f"{NAMESPACE}:mail.domain must be a DNS name, got {domain!r}")
    from_address = (_pick(ml, "fromAddress", None, str, "mail") or f"no-reply@{domain}").lower()
    local, _, from_domain = from_address.partition("@")
    if not _LOCAL_PART.match(local) or from_domain != domain:
        # The SMTP user may send only as <anything>@<mail.domain> (ses:FromAddress).
        raise ConfigError(
            f"{NAMESPACE}:mail.fromAddress must be an address at mail.domain ({domain}), "
            f"got {from_address!r}"
        )
    mail = MailConfig(
        domain=domain,
        from_address=from_address,
        from_name=_pick(ml, "fromName", None, str, "mail") or "Record",
        mail_from_subdomain=_pick(ml, "mailFromSubdomain", None, str, "mail"),
    )
    if not _DISPLAY_NAME.match(mail.from_name):
        raise ConfigError(
            f"{NAMESPACE}:mail.fromName must be letters, digits, spaces, '.', \"'\" or '-', "
            f"got {mail.from_name!r}"
        )
    if mail.mail_from_subdomain is not None and not _LABEL.match(mail.mail_from_subdomain):
        raise ConfigError(
            f"{NAMESPACE}:mail.mailFromSubdomain must be one DNS label (e.g. 'bounce'), "
            f"got {mail.mail_from_subdomain!r}"
        )
    return mail


def validate_production(config: StackConfig) -> None:
    """A production stack keeps its data through a bad day, or it does not build."""
    if not config.project.production:
        return
    problems = []
    if not config.database.deletion_protection:
        problems.append("database.deletionProtection must be true")
    if not config.database.multi_az:
        problems.append("database.multiAz must be true")
    if config.database.backup_retention_days < 7:
        problems.append("database.backupRetentionDays must be >= 7")
    if not config.cache.automatic_failover:
        problems.append("cache.automaticFailover must be true")
    if config.network.az_count < 3:
        problems.append("network.azCount must be 3")
    if config.storage.force_destroy:
        problems.append("storage.forceDestroy must be false")
    if config.workloads.api_replicas < 2:
        problems.append("workloads.apiReplicas must be >= 2")
    if problems:
        raise ConfigError(
            f"production stack {config.project.stack!r} refuses to build: " + "; ".join(problems)
        )
