"""The rendered manifests pass the Kubernetes schemas and checkov; the Dockerfile passes
hadolint. Each validator also sees one deliberately broken input, so these tests can fail."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import DEFAULT_KUBERNETES_VERSION
from infra.plan import REPO_ROOT, Plan
from tests.infra.conftest import STACKS

# The cluster version the stacks deploy.
K8S_VERSION = f"{DEFAULT_KUBERNETES_VERSION}.0"
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "argoproj.io/")

BROKEN_POD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "broken", "namespace": "canary"},
    "spec": {
        "selector": {"matchLabels": {"app": "broken"}},
        "template": {
            "metadata": {"labels": {"app": "broken"}},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "nginx:latest",
                        "securityContext": {"privileged": True},
                        "unknownField": 1,
                    }
                ]
            },
        },
    },
}


def _rollouts_as_deployments(plan: Plan) -> list[dict[str, Any]]:
    """A Rollout's pod template is an ordinary one: check it as a Deployment's, since neither
    validator knows the Rollout CRD."""
    out = []
    for manifest in plan.manifests:
        if manifest["kind"] == "Rollout":
            clone = copy.deepcopy(manifest)
            clone["apiVersion"], clone["kind"] = "apps/v1", "Deployment"
            clone["spec"].pop("strategy")
            clone["metadata"]["name"] += "-as-deployment"
            out.append(clone)
    return out


@pytest.fixture(scope="session")
def manifest_tree(plans: dict[str, Plan], plan_root: Path) -> Path:
    """plan_root plus the Rollouts' pod templates and one broken manifest in ``canary/``."""
    for stack in STACKS:
        for index, clone in enumerate(_rollouts_as_deployments(plans[stack])):
            path = plan_root / stack / "manifests" / f"900-rollout-template-{index}.yaml"
            path.write_text(yaml.safe_dump(clone))
    canary = plan_root / "canary" / "manifests"
    canary.mkdir(parents=True)
    (canary / "broken.yaml").write_text(yaml.safe_dump(BROKEN_POD))
    return plan_root


def test_manifests_match_the_kubernetes_schemas(manifest_tree: Path, tools_bin: Path) -> None:
    files = sorted(manifest_tree.glob("*/manifests/*.yaml"))
    result = subprocess.run(
        [str(tools_bin / "kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    # Only the deliberately broken manifest fails.
    assert errors
    assert all("canary/manifests/broken.yaml" in line for line in errors), errors
    # Only CRDs lack a schema; every built-in kind was checked.
    for line in lines:
        if line.startswith("WARN"):
            assert "Couldn't find schema" in line, line
            assert any(g in line for g in CRD_GROUPS), line
    passed = [line for line in lines if line.startswith("INFO") and " passed for " in line]
    assert len(passed) >= 60


def test_checkov_finds_nothing_to_fix(manifest_tree: Path, tools_bin: Path) -> None:
    result = subprocess.run(
        [
            str(tools_bin / "checkov"),
            "--skip-download",
            "--framework",
            "kubernetes",
            "-d",
            str(manifest_tree),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["file_path"]) for c in results["failed_checks"]]
    stray = [f for f in failed if "/canary/" not in f[1]]
    assert stray == [], stray
    # The broken canary is caught, so a regression in ours would be too.
    assert {"CKV_K8S_16", "CKV_K8S_14"} <= {check for check, _ in failed}
    assert len(results["passed_checks"]) > 500
    scanned = {c["file_path"].split("/")[1] for c in results["passed_checks"]}
    assert set(STACKS) <= scanned
    # Every skip is justified beside it (the annotation's text after "=").
    for check in results["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 30, check["check_id"]
        assert check["check_id"] in {"CKV_K8S_35", "CKV_K8S_8", "CKV_K8S_9"}, check["check_id"]


def test_dockerfile_passes_hadolint(tools_bin: Path, tmp_path: Path) -> None:
    hadolint = str(tools_bin / "hadolint")
    ours = subprocess.run(
        [hadolint, str(REPO_ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ours.returncode == 0, ours.stdout + ours.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    broken = subprocess.run(
        [hadolint, str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert broken.returncode != 0
    assert "DL3007" in broken.stdout


def test_image_is_one_non_root_image_without_build_tools() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    assert len(stages) == 3, "a build stage and a runtime stage"
    runtime = stages[-1]
    assert "slim" in text.split("PYTHON_IMAGE=", 1)[1].splitlines()[0]
    assert "USER 10001:10001" in runtime
    for tool in ("build-essential", "gcc", "pip install"):
        assert tool not in runtime, tool
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*"
    assert "!app/" in ignored
    assert ".venv" not in "".join(line for line in ignored if line.startswith("!"))


def test_image_default_command_is_one_gunicorn_accepts() -> None:
    import json

    from gunicorn.config import Config

    cmd_line = next(
        line
        for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD ")
    )
    command = json.loads(cmd_line.removeprefix("CMD "))
    assert command[0] == "gunicorn"
    parsed = Config().parser().parse_args(command[1:])  # exits on an unknown flag
    assert parsed.args == ["app.main:create_app()"]
