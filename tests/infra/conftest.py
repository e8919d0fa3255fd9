"""Every stack rendered once per session under Pulumi mocks; validators installed once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from infra.plan import REPO_ROOT, Plan, available_stacks, render, write
from tests.infra.urns import Registration, recording

STACKS = ("dev", "staging", "prod", "preview")
TOOLS_BIN = REPO_ROOT / ".venv-tools" / "bin"
# What each stack's resources registered (parents, aliases) while `plans` rendered them.
_REGISTRATIONS: dict[str, list[Registration]] = {}


@pytest.fixture(scope="session")
def plans() -> dict[str, Plan]:
    assert set(STACKS) <= set(available_stacks())
    out = {}
    for stack in STACKS:
        with recording(_REGISTRATIONS.setdefault(stack, [])):
            out[stack] = render(stack)
    return out


@pytest.fixture(scope="session")
def registrations(plans: dict[str, Plan]) -> dict[str, list[Registration]]:
    """Every stack's registered resources, as the Pulumi engine would be told of them."""
    return _REGISTRATIONS


@pytest.fixture(scope="session")
def plan_root(plans: dict[str, Plan], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/<stack>/{resources.json,manifests/}`` for every stack."""
    root = tmp_path_factory.mktemp("plans")
    for stack, plan in plans.items():
        write(plan, root / stack)
    return root


@pytest.fixture(scope="session")
def tools_bin() -> Path:
    """checkov, kubernetes-validate and hadolint live in .venv-tools (their pins clash with
    ours); infra/tools.sh installs them there once and is a no-op afterwards."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "infra" / "tools.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"infra/tools.sh failed:\n{result.stdout}\n{result.stderr}"
    return TOOLS_BIN


def of_kind(plan: Plan, kind: str) -> list[dict[str, Any]]:
    return [m for m in plan.manifests if m["kind"] == kind]


def one(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    items = list(items)
    assert len(items) == 1, f"expected exactly one, got {len(items)}"
    return items[0]


def pod_templates(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    """(workload name, pod template spec) for every Deployment, Job and Rollout."""
    out = []
    for manifest in plan.manifests:
        if manifest["kind"] in {"Deployment", "Job", "Rollout"}:
            out.append((manifest["metadata"]["name"], manifest["spec"]["template"]["spec"]))
    return out
