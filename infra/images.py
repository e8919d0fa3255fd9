"""Images: the ECR repositories a base stack owns, and the images built into them.

Two images from the one ``Dockerfile``: ``api`` (the API, the worker and the migration Job)
and ``models`` (the same runtime stage with ``EXTRAS=ai``: the local model server and its
models). ``pulumi up`` builds them with BuildKit (the ``docker-build`` provider), pushes them
and pins every workload to ``<repository>@<pushed digest>``: a tag can move, a digest cannot.
``record:image.prebuilt`` skips the build for images CI built elsewhere, by digest too.

A preview stack owns no repository: it pushes into its base stack's, tagged ``pr-<n>-...``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from infra.common import child, kms_key, tags
from infra.config import ImageConfig, ProjectConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# The repositories every base stack owns, and each image's build arguments (Dockerfile ARGs).
IMAGES = ("api", "models")
BUILD_ARGS: dict[str, dict[str, str]] = {"api": {}, "models": {"EXTRAS": "ai"}}


def release_of(revision: str) -> str:
    """The image's RECORD_RELEASE: ``record@<12 hex of the commit>`` (the workflows' too)."""
    return f"record@{revision[:12]}"


# The Dockerfile's last stage: both images are the slim runtime, differing in their venv.
BUILD_TARGET = "runtime"
# The node group runs AL2023_x86_64_STANDARD (infra/cluster.py).
PLATFORM = docker_build.Platform.LINUX_AMD64
# What the lifecycle policy keeps. ECR gives each image to the first rule whose tags select it
# and no later rule may expire it, so a rule cannot say "the newest N, and whatever is younger
# than D days": each kind of build gets the one measure that is safe for it.
#
# A stack's own builds, by count: the image a stack runs is its newest build however long ago
# it was pushed (prod may go months without a deploy: an age rule would expire the image its
# nodes pull on their next restart). The count is large because a preview's database drop Job
# runs the base image the preview recorded at its last `up` (infra/provisioner.py), up to the
# preview's TTL plus the reaper's margin later: 200 covers 28 base deploys a day for those 7
# days, and unchanged layers cost nothing twice.
KEEP_BUILDS = 200
# Preview builds (``pr-<n>-<revision>``), by age: a count across every open pull request would
# expire a live preview's image once enough other pushes came after it. A live preview's image
# is at most its TTL old (preview.yml moves the expiry to PREVIEW_TTL_HOURS after each push, 72
# by default), and the hourly reaper destroys it soon after; the margin covers a reaper that
# fails for a long weekend. A longer PREVIEW_TTL_HOURS needs this raised with it.
PREVIEW_TTL_HOURS = 72
PREVIEW_MARGIN_DAYS = 4
PREVIEW_BUILD_DAYS = -(-PREVIEW_TTL_HOURS // 24) + PREVIEW_MARGIN_DAYS
# Untagged manifests: superseded pushes and failed builds' leftovers. The per-platform
# manifests and attestations of a tagged index are untagged too, but ECR never expires a
# manifest that a manifest list still references.
UNTAGGED_DAYS = 7
PREVIEW_TAG_PREFIX = "pr-"


def lifecycle_policy(stack_prefix: str) -> str:
    """ECR lifecycle rules: a lower rulePriority is evaluated first, and an image one rule
    selects is not expired by a later one."""
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"expire untagged manifests after {UNTAGGED_DAYS} days",
                    "selection": {
                        "tagStatus": "untagged",
                        "countType": "sinceImagePushed",
                        "countUnit": "days",
                        "countNumber": UNTAGGED_DAYS,
                    },
                    "action": {"type": "expire"},
                },
                {
                    "rulePriority": 2,
                    "description": f"keep this stack's newest {KEEP_BUILDS} builds",
                    "selection": {
                        "tagStatus": "tagged",
                        "tagPrefixList": [f"{stack_prefix}-"],
                        "countType": "imageCountMoreThan",
                        "countNumber": KEEP_BUILDS,
                    },
                    "action": {"type": "expire"},
                },
                {
                    "rulePriority": 3,
                    "description": f"expire preview builds {PREVIEW_BUILD_DAYS} days after push",
                    "selection": {
                        "tagStatus": "tagged",
                        "tagPrefixList": [PREVIEW_TAG_PREFIX],
                        "countType": "sinceImagePushed",
                        "countUnit": "days",
                        "countNumber": PREVIEW_BUILD_DAYS,
                    },
                    "action": {"type": "expire"},
                },
            ]
        }
    )


def git_revision() -> str:
    """The commit the build context is checked out at: what the pushed tag names."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(
            "cannot tell the commit to tag the images with (git rev-parse HEAD failed): "
            "set record:image.revision"
        ) from error
    return result.stdout.strip()


class Registry(pulumi.ComponentResource):
    """One ECR repository per image: scanned on push, tags immutable, KMS-encrypted."""

    repository_urls: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, project: ProjectConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Registry", name, None, opts)
        key = kms_key(self, project, f"{name}-ecr", f"{name} container images (ECR)")
        policy = lifecycle_policy(project.prefix)
        self.repository_urls = {}
        for image in IMAGES:
            repo_name = f"{name}/{image}"
            repository = aws.ecr.Repository(
                f"{name}-{image}",
                name=repo_name,
                # A pushed tag never moves: what a stack deployed is what that tag names.
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(
                    scan_on_push=True
                ),
                encryption_configurations=[
                    aws.ecr.RepositoryEncryptionConfigurationArgs(
                        encryption_type="KMS", kms_key=key.arn
                    )
                ],
                # A production stack keeps the images its pods pull, even on `pulumi destroy`.
                force_delete=not project.production,
                tags=tags(project, repo_name),
                opts=child(self),
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{image}-lifecycle",
                repository=repository.name,
                policy=policy,
                opts=child(self),
            )
            self.repository_urls[image] = repository.repository_url
        self.register_outputs({"repositoryUrls": self.repository_urls})


@dataclass
class ImagesArgs:
    project: ProjectConfig
    image: ImageConfig
    # The models image is built only for a stack that runs the local model server.
    with_models: bool
    # Where to push: the stack's own Registry, or (a preview) its base stack's repositories.
    repository_urls: dict[str, pulumi.Input[str]]
    # The tags' prefix: the stack's name, or ``pr-<n>`` for a preview.
    tag_prefix: str


class Images(pulumi.ComponentResource):
    """The digest-pinned references the workloads run: ``refs["api"]``, ``refs["models"]``."""

    refs: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Images", name, None, opts)
        wanted = ["api", "models"] if args.with_models else ["api"]
        self.refs = {}
        if args.image.prebuilt:
            prebuilt = {"api": args.image.prebuilt_api, "models": args.image.prebuilt_models}
            for image in wanted:
                ref = prebuilt[image]
                assert ref is not None  # infra/config.py requires it
                self.refs[image] = pulumi.Output.from_input(ref)
            self.register_outputs({"refs": self.refs})
            return
        revision = args.image.revision or git_revision()
        # Relative, so the state names the same context on every machine; relative to where
        # Pulumi runs the program (the project root, or ``main``'s directory).
        context = os.path.relpath(REPO_ROOT)
        # Same account's registry: the token the deployer's credentials get.
        token = aws.ecr.get_authorization_token_output()
        for image in wanted:
            repository_url = pulumi.Output.from_input(args.repository_urls[image])
            registry = repository_url.apply(lambda url: url.split("/", 1)[0])
            built = docker_build.Image(
                f"{name}-{image}-build",
                context=docker_build.BuildContextArgs(location=context),
                dockerfile=docker_build.DockerfileArgs(
                    location=os.path.join(context, "Dockerfile")
                ),
                target=BUILD_TARGET,
                # The release Sentry tags events with (app/kit/sentry.py): this commit.
                build_args={**BUILD_ARGS[image], "RECORD_RELEASE": release_of(revision)},
                platforms=[PLATFORM],
                push=True,
                # `pulumi preview` needs no Docker daemon and pushes nothing.
                build_on_preview=False,
                tags=[repository_url.apply(lambda url: f"{url}:{args.tag_prefix}-{revision}")],
                registries=[
                    docker_build.RegistryArgs(
                        address=registry,
                        username=token.user_name,
                        password=pulumi.Output.secret(token.password),
                    )
                ],
                opts=child(self),
            )
            # The repository and the digest, not the tag: what was pushed is what runs.
            self.refs[image] = pulumi.Output.concat(repository_url, "@", built.digest)
        self.register_outputs({"refs": self.refs})
