"""How every Record pod and container runs: one copy, with no Pulumi import, so that the
in-cluster rollout gate (``infra/rollout_gate.py``, run from the app image) can use it too."""

from __future__ import annotations

from typing import Any

# The image's user (Dockerfile).
UID = 10001


def container_security() -> dict[str, Any]:
    """A container's securityContext: non-root, read-only root, no privileges."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    """A pod's securityContext."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
