"""The migration Job's name: a new one whenever anything it runs with changes, so that
create-before-delete never meets the old Job under the same name, and a rotated database
password runs the bootstrap that sets it in PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from infra.plan import Plan, render
from tests.infra.conftest import one


def migration_job(plan: Plan) -> dict[str, Any]:
    return one(
        r["inputs"]
        for r in plan.resources
        if r["type"] == "kubernetes:batch/v1:Job"
        and r["inputs"]["metadata"]["name"].startswith("record-migrate-")
    )


@pytest.fixture(scope="module")
def variants(plans: dict[str, Plan]) -> dict[str, dict[str, Any]]:
    """staging's Job as rendered, again unchanged, with other labels, with a new password."""
    return {
        "staging": migration_job(plans["staging"]),
        "again": migration_job(render("staging")),
        # The owner tag is a label on the Job's pods: the image is the same.
        "owner": migration_job(render("staging", {"record:owner": "another-team"})),
        "password": migration_job(render("staging", {"record:dbAppPassword": "rotated-01234"})),
    }


def test_the_same_program_names_the_same_job(variants):
    assert variants["again"]["metadata"]["name"] == variants["staging"]["metadata"]["name"]


def test_a_template_change_with_the_same_image_is_a_new_job_name(variants):
    before, after = variants["staging"], variants["owner"]
    containers = [c["image"] for c in before["spec"]["template"]["spec"]["containers"]]
    assert containers == [c["image"] for c in after["spec"]["template"]["spec"]["containers"]]
    assert before["spec"]["template"] != after["spec"]["template"]
    assert after["metadata"]["name"] != before["metadata"]["name"]


def test_a_rotated_password_runs_the_job_again(variants):
    before, after = variants["staging"], variants["password"]
    # The manifest itself does not change (the passwords reach it through Secrets) ...
    assert {**after, "metadata": {}} == {**before, "metadata": {}}
    # ... but its name does, so `pulumi up` runs the bootstrap that sets the new passwords.
    assert after["metadata"]["name"] != before["metadata"]["name"]
    # The name is a digest, not the secret: nothing of it is masked.
    assert len(after["metadata"]["name"]) == len("record-migrate-") + 12
