"""The program's structure: one component per workload, and no stack replaces a resource
because the split into components gave it a new parent.

A resource's URN names its parents' types; a resource whose URN changes is deleted and created
again unless an alias names its old URN. ``urns_before_split.json`` holds the URNs that the
workloads' objects and the canary's AnalysisTemplate had in every stack before
``infra/workloads.py`` was split (as the engine computes them; ``tests/infra/urns.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.plan import PROJECT, Plan
from tests.infra.conftest import STACKS
from tests.infra.urns import EngineUrns, Registration

BEFORE_SPLIT = Path(__file__).with_name("urns_before_split.json")
# The preview's prefix before and after it stopped repeating its slug (infra/config.py).
PREVIEW_RENAMED = ("record-preview-pr-0", "record-pr-0")


def _engine(registrations: dict[str, list[Registration]], stack: str) -> EngineUrns:
    return EngineUrns(stack, PROJECT, registrations[stack])


def _name(urn: str) -> tuple[str, str]:
    """(type, name): what a plan's resource says of itself."""
    _, _, qualified, name = urn.split("::")
    return qualified.rsplit("$", 1)[-1], name


@pytest.mark.parametrize("stack", STACKS)
def test_no_resource_is_replaced_by_the_split(
    plans: dict[str, Plan], registrations: dict[str, list[Registration]], stack: str
) -> None:
    before = json.loads(BEFORE_SPLIT.read_text())[stack]
    assert before
    # The same resources by type and name...
    rendered = {(r["type"], r["name"]) for r in plans[stack].resources}
    names = {_name(urn) for urn in before}
    if stack == "preview":
        # Renamed since (record-pr-<n>, infra/config.py), under aliases to the old names.
        names = {(typ, name.replace(*PREVIEW_RENAMED, 1)) for typ, name in names}
    assert names <= rendered
    # ...and each answers to its old URN, its own or through an alias.
    engine = _engine(registrations, stack)
    unclaimed = sorted(set(before) - engine.claimed())
    assert not unclaimed, "\n".join(unclaimed)


@pytest.mark.parametrize("stack", STACKS)
def test_the_workloads_are_components(
    plans: dict[str, Plan], registrations: dict[str, list[Registration]], stack: str
) -> None:
    engine = _engine(registrations, stack)
    parents = {
        r.name: engine.qualified_type(r).rsplit("$", 2)[-2]
        for r in engine.registrations
        if r.type.startswith("kubernetes:") and "$" in engine.qualified_type(r)
    }
    prefix = f"record-{stack}" if stack != "preview" else PREVIEW_RENAMED[1]
    assert parents[f"{prefix}-migrate"] == "record:infra:MigrationJob"
    assert parents[f"{prefix}-worker"] == "record:infra:Worker"
    assert parents[f"{prefix}-ingress"] == "record:infra:Api"
    canary = any(m["kind"] == "Rollout" for m in plans[stack].manifests)
    api_parent = "record:infra:ApiRollout" if canary else "record:infra:Api"
    assert parents[f"{prefix}-api"] == api_parent
    if canary:
        # The Rollout, the analysis that judges it and the gate that waits for it: one block.
        for name in ("analysis-success-rate", "rollout-gate"):
            assert parents[f"{prefix}-{name}"] == "record:infra:ApiRollout"


def test_the_alias_check_can_fail(registrations: dict[str, list[Registration]]) -> None:
    """Without its aliases a moved resource's old URN is claimed by nothing."""
    engine = _engine(registrations, "prod")
    bare = [
        Registration(r.type, r.name, r.mock_urn, r.parent, aliases=()) for r in engine.registrations
    ]
    before = set(json.loads(BEFORE_SPLIT.read_text())["prod"])
    unclaimed = before - EngineUrns("prod", PROJECT, bare).claimed()
    assert {_name(urn)[1] for urn in unclaimed} >= {
        "record-prod-api",
        "record-prod-migrate",
        "record-prod-worker",
        "record-prod-analysis-success-rate",
    }
