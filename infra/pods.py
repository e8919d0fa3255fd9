"""Pods: the hardened shape every Record container and pod has, and what every workload shares.

The pod spec is the same everywhere (non-root, read-only root file system, no privilege
escalation, no capabilities, RuntimeDefault seccomp). The workload components (``infra/api.py``,
``infra/worker.py``, ``infra/model_server.py``, ``infra/migration.py``) build their objects
from :class:`Pods`; ``infra/workloads.py`` composes them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi

from infra import k8s as kube
from infra.config import ProjectConfig
from infra.hardening import container_security, pod_security

API_PORT = 8000
MODEL_PORT = 8100
WORKER_METRICS_PORT = 9100
RDS_CA_BUNDLE = "/etc/ssl/certs/rds-global-bundle.pem"
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
# Only the worker sends mail, so only the worker sees the SMTP credentials (secretKeyRef).
SMTP_SECRET = "record-smtp"
SMTP_SECRET_KEYS = ("SMTP_USERNAME", "SMTP_PASSWORD")


@dataclass(frozen=True)
class Pods:
    """What every workload's objects share: the project (labels, resource names), the
    namespace and the digest-pinned app image its containers run unless told otherwise."""

    project: ProjectConfig
    namespace: str
    image: pulumi.Input[str]

    def apply(
        self, name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        return kube.apply(f"{self.project.prefix}-{name}", manifest, opts)

    def meta(
        self,
        name: pulumi.Input[str],
        component: str | None,
        annotations: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": kube.labels(self.project, component),
        }
        if annotations:
            meta["annotations"] = annotations
        return meta

    def container(
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
            "image": image if image is not None else self.image,
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
            "securityContext": container_security(),
            "volumeMounts": [
                # An emptyDir of the pod's own, not the node's /tmp.
                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                {"name": "metrics", "mountPath": "/run/metrics"},
            ],
            **extra,
        }

    def pod(self, component: str, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "metadata": {
                "labels": kube.labels(self.project, component),
                "annotations": {"checkov.io/skip1": SECRETS_AS_ENV_SKIP},
            },
            "spec": {
                "serviceAccountName": f"record-{component}",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": pod_security(),
                "containers": containers,
                "volumes": [
                    {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    # prometheus-client's multiprocess files: one per gunicorn worker.
                    {"name": "metrics", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                ],
                **extra,
            },
        }

    def spread(self, component: str) -> list[dict[str, Any]]:
        match = {"matchLabels": kube.selector(self.project, component)}
        zone_policy = "DoNotSchedule" if self.project.production else "ScheduleAnyway"
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

    def pdb(
        self, component: str, budget: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        return self.apply(
            f"{component}-pdb",
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.meta(f"record-{component}", component),
                "spec": {
                    "selector": {"matchLabels": kube.selector(self.project, component)},
                    **budget,
                },
            },
            opts,
        )


def moved_from(old_parent: pulumi.Resource | pulumi.Input[str] | None) -> list[pulumi.Alias]:
    """Aliases for a resource that another component used to parent: its URN then named that
    parent, and without the alias an existing stack would replace it (delete and create)."""
    return [] if old_parent is None else [pulumi.Alias(parent=old_parent)]


def child_options(
    parent: pulumi.Resource,
    provider: pulumi.ProviderResource,
    depends_on: list[pulumi.Resource],
    old_parent: pulumi.Resource | pulumi.Input[str] | None = None,
) -> pulumi.ResourceOptions:
    """What every Kubernetes object of a workload component is created with."""
    return pulumi.ResourceOptions(
        parent=parent, provider=provider, depends_on=depends_on, aliases=moved_from(old_parent)
    )


def fingerprint(secret: pulumi.Input[str]) -> pulumi.Output[str]:
    """A short digest of a secret, safe in clear text: 48 bits of SHA-256 of a password derived
    from a random 40-character key say nothing about it, and an annotation must not be secret,
    or the whole Deployment would be one."""
    digest = pulumi.Output.from_input(secret).apply(
        lambda value: hashlib.sha256(str(value).encode()).hexdigest()[:12]
    )
    return pulumi.Output.unsecret(digest)


def role_password(secret: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    """Each login role's password, derived from the stack's one Pulumi secret
    (``dbAppPassword``): the API's or the worker's, if it leaks, says nothing of the owner's."""
    return pulumi.Output.secret(
        pulumi.Output.from_input(secret).apply(
            lambda value: hmac.new(
                str(value).encode(), f"record-db-login:{role}".encode(), hashlib.sha256
            ).hexdigest()
        )
    )


def database_url(
    role: str,
    password: pulumi.Input[str],
    host: pulumi.Input[str],
    port: pulumi.Input[int],
    db_name: str,
) -> pulumi.Output[str]:
    """A DATABASE_URL that verifies RDS's certificate against the bundle in the app image."""
    return pulumi.Output.secret(
        pulumi.Output.all(host, port, password).apply(
            lambda v: (
                f"postgresql://{role}:{quote(str(v[2]), safe='')}@{v[0]}:{int(v[1])}"
                f"/{db_name}?sslmode=verify-full&sslrootcert={RDS_CA_BUNDLE}"
            )
        )
    )
