"""Kubernetes objects from plain manifests: one place maps a kind to its pulumi-kubernetes class.

Blocks write manifests the way ``kubectl`` users read them (camelCase dicts); ``apply`` turns one
into a resource. CRD kinds (KEDA, Prometheus operator, Argo Rollouts) become CustomResources.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.config import ProjectConfig

_KINDS: dict[str, Any] = {
    "Namespace": k8s.core.v1.Namespace,
    "ServiceAccount": k8s.core.v1.ServiceAccount,
    "ConfigMap": k8s.core.v1.ConfigMap,
    "Secret": k8s.core.v1.Secret,
    "Service": k8s.core.v1.Service,
    "Deployment": k8s.apps.v1.Deployment,
    "Job": k8s.batch.v1.Job,
    "Ingress": k8s.networking.v1.Ingress,
    "NetworkPolicy": k8s.networking.v1.NetworkPolicy,
    "HorizontalPodAutoscaler": k8s.autoscaling.v2.HorizontalPodAutoscaler,
    "PodDisruptionBudget": k8s.policy.v1.PodDisruptionBudget,
    "Role": k8s.rbac.v1.Role,
    "RoleBinding": k8s.rbac.v1.RoleBinding,
}
_TOP_LEVEL = {
    "stringData": "string_data",
    "automountServiceAccountToken": "automount_service_account_token",
    "roleRef": "role_ref",
}


def labels(project: ProjectConfig, component: str | None = None) -> dict[str, str]:
    """Labels every object carries: the cost tags, as Kubernetes spells them."""
    out = {
        "app.kubernetes.io/name": "record",
        "app.kubernetes.io/instance": project.prefix,
        "app.kubernetes.io/part-of": "record",
        "app.kubernetes.io/managed-by": "pulumi",
        "record.dev/project": project.project,
        "record.dev/stack": project.stack,
        "record.dev/owner": project.owner,
        "record.dev/cost-centre": project.cost_centre,
    }
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def selector(project: ProjectConfig, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": project.prefix, "app.kubernetes.io/component": component}


def apply(
    name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
) -> pulumi.CustomResource:
    kind = manifest["kind"]
    cls = _KINDS.get(kind)
    body = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    if cls is None:
        return k8s.apiextensions.CustomResource(
            name, api_version=manifest["apiVersion"], kind=kind, opts=opts, **body
        )
    kwargs = {_TOP_LEVEL.get(key, key): value for key, value in body.items()}
    resource: pulumi.CustomResource = cls(name, opts=opts, **kwargs)
    return resource
