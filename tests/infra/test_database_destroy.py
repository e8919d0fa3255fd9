"""What `pulumi destroy` of a stack whose database is not protected (dev, staging) leaves
behind must be usable: the final snapshot and the retained automated backups are encrypted
with the database's KMS key, so the key outlives the stack; and the final snapshot's name is
new for each life of the stack, or the second destroy of a re-created stack fails
(DBSnapshotAlreadyExists)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pulumi.runtime import mocks

from infra.database import snapshot_suffix
from infra.plan import Plan, render
from tests.infra.conftest import one


@contextmanager
def options_seen(into: dict[tuple[str, str], dict[str, bool]]) -> Iterator[None]:
    """Records each resource's retainOnDelete and protect, which mocks otherwise drop."""
    original = mocks.MockMonitor.RegisterResource

    def spy(self: mocks.MockMonitor, request: Any) -> Any:
        into[(request.type, request.name)] = {
            "retain_on_delete": request.retainOnDelete,
            "protect": request.protect,
        }
        return original(self, request)

    mocks.MockMonitor.RegisterResource = spy  # type: ignore[method-assign]
    try:
        yield
    finally:
        mocks.MockMonitor.RegisterResource = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def dev() -> tuple[Plan, dict[tuple[str, str], dict[str, bool]]]:
    seen: dict[tuple[str, str], dict[str, bool]] = {}
    with options_seen(seen):
        plan = render("dev")
    return plan, seen


def test_the_database_key_outlives_the_stack(dev):
    plan, seen = dev
    instance = one(plan.of_type("aws:rds/instance:Instance"))["inputs"]
    # dev is the case: nothing protects its instance, so destroy deletes it to a snapshot.
    assert instance["deletionProtection"] is False
    assert instance["skipFinalSnapshot"] is False
    assert instance["deleteAutomatedBackups"] is False
    key_name = "record-dev-db"
    assert one(r for r in plan.of_type("aws:kms/key:Key") if r["name"] == key_name)
    assert instance["kmsKeyId"].endswith(f"-{key_name}")
    assert seen[("aws:kms/key:Key", key_name)]["retain_on_delete"] is True
    # Only that key: the others encrypt nothing that outlives the stack.
    retained = {name for (typ, name), o in seen.items() if o["retain_on_delete"]}
    assert retained == {key_name}


def test_the_final_snapshot_is_named_for_this_life_of_the_stack(dev):
    plan, _ = dev
    instance = one(plan.of_type("aws:rds/instance:Instance"))["inputs"]
    identifier = instance["finalSnapshotIdentifier"]
    assert identifier == f"record-dev-final-{snapshot_suffix(instance['kmsKeyId'])}"
    # RDS's rules: a letter first, letters, digits and single hyphens, at most 255.
    assert re.fullmatch(r"[a-z](-?[a-z0-9])*", identifier), identifier
    assert len(identifier) <= 255


def test_the_suffix_is_stable_for_a_key_and_new_for_a_new_one():
    first = "arn:aws:kms:eu-west-1:111111111111:key/0f6c2a4e-1b8d-4c1e-9a51-3d2f7e6b8a90"
    again = "arn:aws:kms:eu-west-1:111111111111:key/7d3e9b12-5a44-4f0c-8e6d-2b1c0a9f4e77"
    assert snapshot_suffix(first) == snapshot_suffix(first)
    assert snapshot_suffix(first) != snapshot_suffix(again)
