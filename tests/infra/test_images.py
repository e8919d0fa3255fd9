"""The program builds and pushes its images into ECR repositories it owns, and every workload
runs the pushed digest; ``record:image.prebuilt`` pins images built elsewhere instead."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.config import ConfigError
from infra.images import KEEP_BUILDS, PREVIEW_MARGIN_DAYS, PREVIEW_TTL_HOURS
from infra.plan import REPO_ROOT, Plan, offline_digest, render
from infra.provisioner import JOB_PREFIX
from infra.rollout_gate import GATE_NAME
from tests.infra.conftest import STACKS, one, pod_templates

IMAGE = "docker-build:index:Image"
REPOSITORY = "aws:ecr/repository:Repository"
LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy"
DIGEST_REF = re.compile(r"^(?P<repo>[\w.\-/]+)@sha256:[0-9a-f]{64}$")
PREBUILT = {
    "api": "111111111111.dkr.ecr.eu-west-1.amazonaws.com/ci/record@sha256:" + "a1" * 32,
    "models": "111111111111.dkr.ecr.eu-west-1.amazonaws.com/ci/record-ai@sha256:" + "b2" * 32,
}
BASE_STACKS = ("dev", "staging", "prod")
# Stacks that run the local model server (workloads.useLocalModels), so build its image too.
LOCAL_MODELS = {"dev": True, "staging": False, "prod": False, "preview": True}


def _images(plan: Plan) -> dict[str, dict[str, Any]]:
    """Built images by role (``api``/``models``), from the resource names."""
    return {r["name"].rsplit("-", 2)[-2]: r for r in plan.of_type(IMAGE)}


def _containers(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    # Not a preview's database provisioner: it runs the base's image (infra/provisioner.py).
    return [
        (name, container)
        for name, pod in pod_templates(plan)
        if not name.startswith(JOB_PREFIX)
        for container in pod["containers"] + pod.get("initContainers", [])
    ]


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_base_stack_owns_scanned_immutable_encrypted_repositories(
    plans: dict[str, Plan], stack: str
) -> None:
    plan = plans[stack]
    repositories = {r["inputs"]["name"]: r["inputs"] for r in plan.of_type(REPOSITORY)}
    assert set(repositories) == {f"record-{stack}/api", f"record-{stack}/models"}
    for name, repo in repositories.items():
        assert repo["imageTagMutability"] == "IMMUTABLE", name
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}, name
        encryption = one(repo["encryptionConfigurations"])
        assert encryption["encryptionType"] == "KMS", name
        assert encryption["kmsKey"].startswith("arn:aws:kms:"), name
        # Production keeps its images on `pulumi destroy`; the others may go with the stack.
        assert repo["forceDelete"] is (stack != "prod"), name
    lifecycles = plan.of_type(LIFECYCLE)
    assert sorted(r["inputs"]["repository"] for r in lifecycles) == sorted(repositories)


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_lifecycle_policy_keeps_recent_builds_and_expires_untagged(
    plans: dict[str, Plan], stack: str
) -> None:
    for resource in plans[stack].of_type(LIFECYCLE):
        rules = json.loads(resource["inputs"]["policy"])["rules"]
        assert set(json.loads(resource["inputs"]["policy"])) == {"rules"}
        priorities = [rule["rulePriority"] for rule in rules]
        assert len(set(priorities)) == len(priorities)
        for rule in rules:
            # ECR's schema: every rule has these three, and only expire as its action.
            assert set(rule) <= {"rulePriority", "description", "selection", "action"}
            assert rule["action"] == {"type": "expire"}
            selection = rule["selection"]
            assert selection["tagStatus"] in {"tagged", "untagged", "any"}
            assert selection["countType"] in {"imageCountMoreThan", "sinceImagePushed"}
            assert isinstance(selection["countNumber"], int)
            assert selection["countNumber"] > 0
            if selection["countType"] == "sinceImagePushed":
                assert selection["countUnit"] == "days"
            if selection["tagStatus"] == "tagged":
                assert selection.get("tagPrefixList") or selection.get("tagPatternList")
            # A catch-all rule must come last (ECR refuses it elsewhere); this policy has none:
            # images tagged by someone else are left alone.
            assert selection["tagStatus"] != "any"
        untagged = one(r for r in rules if r["selection"]["tagStatus"] == "untagged")
        assert untagged["selection"]["countType"] == "sinceImagePushed"
        assert untagged["selection"]["countNumber"] <= 14
        builds = one(
            r for r in rules if r["selection"].get("tagPrefixList") == [f"record-{stack}-"]
        )
        assert builds["selection"]["countType"] == "imageCountMoreThan"
        assert builds["selection"]["countNumber"] >= 10
        assert one(r for r in rules if r["selection"].get("tagPrefixList") == ["pr-"])


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_built_from_the_dockerfile_and_pushed(
    plans: dict[str, Plan], stack: str
) -> None:
    images = _images(plans[stack])
    assert set(images) == ({"api", "models"} if LOCAL_MODELS[stack] else {"api"})
    registry = (
        "000000000000.dkr.ecr.eu-west-1.amazonaws.com/"
        + ("offline-placeholder-base" if stack == "preview" else f"record-{stack}")
        + "/"
    )
    tag_prefix = "pr-0-" if stack == "preview" else f"record-{stack}-"
    for role, resource in images.items():
        inputs = resource["inputs"]
        assert inputs["push"] is True
        # The repository's root and its Dockerfile, relative to where the program runs.
        assert Path(inputs["context"]["location"]).resolve() == REPO_ROOT
        assert Path(inputs["dockerfile"]["location"]).resolve() == REPO_ROOT / "Dockerfile"
        assert inputs["target"] == "runtime"
        assert inputs["platforms"] == ["linux/amd64"]
        tag = one(inputs["tags"])
        # The release error reports carry is the commit the tag names.
        release = f"record@{tag.rsplit('-', 1)[1][:12]}"
        extras = {"EXTRAS": "ai"} if role == "models" else {}
        assert inputs["buildArgs"] == {**extras, "RECORD_RELEASE": release}
        assert tag.startswith(f"{registry}{role}:{tag_prefix}"), tag
        registry_auth = one(inputs["registries"])
        assert registry_auth["username"]
        assert registry_auth["password"] == "[secret]"


@pytest.mark.parametrize("stack", STACKS)
def test_every_workload_runs_the_pushed_digest(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    pushed = {
        role: f"{one(r['inputs']['tags']).rsplit(':', 1)[0]}@{offline_digest(r['name'])}"
        for role, r in _images(plan).items()
    }
    containers = _containers(plan)
    assert containers
    for name, container in containers:
        role = "models" if container["name"] == "model-server" else "api"
        assert container["image"] == pushed[role], name
        assert "0" * 64 not in container["image"], name
    if LOCAL_MODELS[stack]:
        assert any(c["name"] == "model-server" for _, c in containers)
    # The migration Job is named after the image it migrates with.
    job = one(
        m
        for m in plan.manifests
        # Not the base's provisioner, nor the rollout gate (named after the Rollout's spec).
        if m["kind"] == "Job" and not m["metadata"]["name"].startswith((JOB_PREFIX, GATE_NAME))
    )
    assert job["metadata"]["name"].startswith("record-migrate-")


def test_node_role_may_pull_from_ecr(plans: dict[str, Plan]) -> None:
    attachments = plans["staging"].of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert any(
        a["inputs"]["policyArn"] == "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
        for a in attachments
    )


@pytest.mark.parametrize("stack", ["dev", "preview", "prod"])
def test_prebuilt_images_are_pinned_and_nothing_is_built(stack: str) -> None:
    plan = render(stack, {"record:image": {"prebuilt": PREBUILT}})
    assert plan.of_type(IMAGE) == []
    for name, container in _containers(plan):
        role = "models" if container["name"] == "model-server" else "api"
        assert container["image"] == PREBUILT[role], name
    # A base stack keeps its repositories (previews may still build into them).
    if stack != "preview":
        assert len(plan.of_type(REPOSITORY)) == 2


def test_revision_names_the_pushed_tag() -> None:
    plan = render("staging", {"record:image": {"revision": "ci-1234"}})
    tag = one(one(plan.of_type(IMAGE))["inputs"]["tags"])
    assert tag.endswith("/record-staging/api:record-staging-ci-1234")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"prebuilt": {"api": "ghcr.io/example/record:latest"}}, "pinned by digest"),
        ({"prebuilt": {"api": "ghcr.io/example/record@sha256:abc"}}, "pinned by digest"),
        (
            {"prebuilt": {"api": "ghcr.io/example/record@sha256:" + "A" * 64}},
            "pinned by digest",
        ),
        ({"prebuilt": {"models": PREBUILT["models"]}}, "needs api"),
        ({"prebuilt": {"api": PREBUILT["api"]}}, "needs models"),
        ({"prebuilt": {**PREBUILT, "worker": PREBUILT["api"]}}, "unknown keys ['worker']"),
        ({"prebuilt": [PREBUILT["api"]]}, "must be a mapping"),
        ({"revision": "a b"}, "tag-safe"),
        ({"tag": "latest"}, "unknown keys ['tag']"),
        (PREBUILT["api"], "record:image is a mapping now"),
    ],
)
def test_invalid_image_config_is_refused(image: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        render("dev", {"record:image": image})


# --- the lifecycle policy, evaluated as ECR does -------------------------------------------


@dataclass(frozen=True)
class Pushed:
    tag: str | None  # None: an untagged manifest
    days_ago: float


def expired(policy: dict[str, Any], images: list[Pushed]) -> set[Pushed]:
    """What ECR's lifecycle would expire: each image belongs to the first rule (by
    rulePriority) whose tag selection matches it, and no later rule may expire it; a count
    rule keeps its newest ``countNumber`` images, an age rule expires those pushed more than
    ``countNumber`` days ago."""
    rules = sorted(policy["rules"], key=lambda rule: rule["rulePriority"])
    claimed: dict[int, list[Pushed]] = {rule["rulePriority"]: [] for rule in rules}
    for image in images:
        for rule in rules:
            selection = rule["selection"]
            status = selection["tagStatus"]
            if (
                status == "any"
                or (status == "untagged" and image.tag is None)
                or (
                    status == "tagged"
                    and image.tag is not None
                    and any(image.tag.startswith(p) for p in selection["tagPrefixList"])
                )
            ):
                claimed[rule["rulePriority"]].append(image)
                break
    out: set[Pushed] = set()
    for rule in rules:
        selection, mine = rule["selection"], claimed[rule["rulePriority"]]
        if selection["countType"] == "sinceImagePushed":
            out |= {image for image in mine if image.days_ago > selection["countNumber"]}
        else:
            newest_first = sorted(mine, key=lambda image: image.days_ago)
            out |= set(newest_first[selection["countNumber"] :])
    return out


@pytest.fixture(scope="module")
def staging_policy(plans: dict[str, Plan]) -> dict[str, Any]:
    policies = {r["inputs"]["policy"] for r in plans["staging"].of_type(LIFECYCLE)}
    assert len(policies) == 1
    return json.loads(policies.pop())


def test_the_evaluator_expires_what_the_rules_say(staging_policy):
    old_untagged, new_untagged = Pushed(None, 30), Pushed(None, 1)
    foreign = Pushed("latest", 400)
    gone = expired(staging_policy, [old_untagged, new_untagged, foreign])
    # Untagged leftovers go after a week; a tag of nobody's prefix is left alone.
    assert gone == {old_untagged}


def test_many_open_pull_requests_keep_every_live_preview_s_image(staging_policy):
    """80 open pull requests, each pushed within its TTL: the former rule (the newest 50
    preview builds) expired the 30 oldest live previews' images."""
    live = [Pushed(f"pr-{n}-abc{n}", days_ago=n * 3 / 80) for n in range(1, 81)]
    superseded = [Pushed(f"pr-{n}-old{n}", days_ago=3 + n / 80) for n in range(1, 81)]
    gone = expired(staging_policy, live + superseded)
    assert not gone & set(live)
    # An abandoned preview's builds still go, once no preview can run them.
    stale = Pushed("pr-9-stale", days_ago=PREVIEW_TTL_HOURS / 24 + PREVIEW_MARGIN_DAYS + 1)
    assert stale in expired(staging_policy, [*live, stale])


def test_a_busy_week_keeps_the_base_image_a_preview_s_drop_job_recorded(staging_policy):
    """A preview recorded staging's image at its last `up`; staging then deployed 20 times a
    day until the preview's TTL and the reaper's margin ran out: the drop Job's image is still
    there (the former 30 builds kept it for a day and a half)."""
    recorded = Pushed("record-staging-recorded", days_ago=PREVIEW_TTL_HOURS / 24 + 4)
    since = [Pushed(f"record-staging-{i}", days_ago=i / 20) for i in range(7 * 20)]
    assert recorded not in expired(staging_policy, [*since, recorded])


def test_the_image_a_base_stack_runs_is_kept_however_old(staging_policy):
    """prod may not deploy for months: its newest build is what its nodes pull."""
    running = Pushed("record-staging-running", days_ago=365)
    older = [Pushed(f"record-staging-{i}", days_ago=366 + i) for i in range(300)]
    gone = expired(staging_policy, [running, *older])
    assert running not in gone
    assert len(gone) == 301 - KEEP_BUILDS
