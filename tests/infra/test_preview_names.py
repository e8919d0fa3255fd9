"""A preview stack as the workflow names it, ``preview-pr-<n>``: its resources are named
``record-pr-<n>-…`` (not ``record-preview-pr-<n>-pr-<n>-…``), fit AWS's and Kubernetes' length
limits with a five-digit pull request number, and answer to their old names by alias."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra import plan as plans_module
from infra.plan import Plan
from tests.infra.urns import EngineUrns, Registration, recording

STACK = "preview-pr-12345"
PREFIX = "record-pr-12345"
FORMER = "record-preview-pr-12345-pr-12345"
# A DNS-1123 label: namespaces, Services, and the names Kubernetes puts in labels.
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture(scope="module")
def rendered() -> tuple[Plan, list[Registration]]:
    """The preview template's config under the stack name the workflow gives it."""
    read = plans_module.stack_config
    registrations: list[Registration] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plans_module, "stack_config", lambda stack: read("preview"))
        with recording(registrations):
            plan = plans_module.render(
                STACK, {"record:preview": {"baseStack": "staging", "prNumber": 12345}}
            )
    return plan, registrations


def _named(plan: Plan) -> list[dict[str, Any]]:
    return [r for r in plan.resources if r["type"] != "pulumi:pulumi:StackReference"]


def test_names_say_the_pull_request_once(rendered):
    plan, _ = rendered
    names = [r["name"] for r in _named(plan)]
    assert PREFIX in names
    assert not [name for name in names if "preview-pr" in name or name.count("pr-12345") > 1]
    prefixed = [name for name in names if name.startswith("record-")]
    assert all(name == PREFIX or name.startswith(f"{PREFIX}-") for name in prefixed), prefixed
    assert plan.outputs["namespace"] == PREFIX
    assert plan.outputs["database"] == "record_pr_12345"


def test_names_fit_the_limits(rendered):
    plan, _ = rendered
    roles = [r["inputs"]["name"] for r in plan.of_type("aws:iam/role:Role")]
    assert roles
    assert all(len(role) <= 64 for role in roles), roles
    (user,) = plan.of_type("aws:elasticache/user:User")
    # ElastiCache: a user id of 1-40 letters, digits and hyphens, starting with a letter.
    assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{0,39}", user["inputs"]["userId"])
    assert user["inputs"]["userId"] == PREFIX
    # PostgreSQL identifiers (the database and its roles, record_pr_<n>_worker ...): 63 bytes.
    assert len(f"{plan.outputs['database']}_worker") <= 63
    for manifest in plan.manifests:
        name = manifest["metadata"]["name"]
        assert len(name) <= 63, name
        assert K8S_NAME.fullmatch(name), name
        for value in manifest["metadata"].get("labels", {}).values():
            assert len(value) <= 63, (name, value)


def test_renamed_resources_answer_to_their_old_names(rendered):
    _, registrations = rendered
    engine = EngineUrns(STACK, "record", registrations)
    claimed = engine.claimed()
    renamed = [r for r in registrations if r.name.startswith(PREFIX)]
    assert renamed
    for registration in renamed:
        old = engine.urn(registration).rsplit("::", 1)[0] + "::" + FORMER
        old += registration.name[len(PREFIX) :]
        assert old in claimed, old
    # The two whose replacement would hurt: the provider (every object with it) and the
    # database (created again, then the old one's delete drops record_pr_<n>).
    kinds = {r.type for r in renamed}
    assert {"pulumi:providers:kubernetes", "command:local:Command"} <= kinds


def test_a_base_stack_keeps_its_names(plans):
    assert any(r["name"] == "record-staging-db" for r in plans["staging"].resources)
