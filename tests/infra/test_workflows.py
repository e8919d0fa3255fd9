"""The GitHub workflows (.github/workflows) hold to their contract: valid for GitHub's schema,
actions pinned by commit, read-only unless a job needs more, OIDC instead of AWS keys, one
update of a stack at a time, previews only for this repository's branches and destroyed on
close, a reaper on a schedule, dev -> staging -> prod behind environments, a smoke check after
every `pulumi up`, and shell that parses. Previews deploy main's program with the pull
request's images only; every tool a step calls is there on either runner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import DEFAULT_KUBERNETES_VERSION
from infra.github_oidc import MAX_SESSION_SECONDS
from infra.plan import REPO_ROOT
from infra.reaper import parse_expiry

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
# Every workflow gets the checks below, whoever adds it.
NAMES = tuple(sorted(p.stem for p in WORKFLOWS.glob("*.yml")))
# owner/repo[/path]@<40 hex> # v<version>: a tag can be moved to other code, a commit cannot;
# the comment says which release the commit is.
PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(?:\.\d+)*\s*$")
PREVIEW_ONLY_SAME_REPO = "github.event.pull_request.head.repo.full_name == github.repository"
ALLOWED_JOB_PERMISSIONS = {
    "contents": {"read"},
    "id-token": {"write"},
    "pull-requests": {"read", "write"},
    "actions": {"read"},
}
# What both runner images have without an install step: GitHub's ubuntu-24.04 and the in-VPC
# CodeBuild runner's aws/codebuild/standard:7.0 (Ubuntu 22.04: jq, curl, docker with buildx,
# the aws CLI v2, python3 via pyenv; its kubectl is 1.25, too old for the clusters, and it has
# no gh). A job pinned to ubuntu-24.04 may also use what that image adds.
RUNNER_TOOLS = {
    "ubuntu-24.04": {"aws", "jq", "curl", "docker", "python", "gh", "sed", "sha256sum"},
    "codebuild-standard-7.0": {"aws", "jq", "curl", "docker", "python", "sed", "sha256sum"},
}
# Each tool a step may call, and how a step that installs it is recognised.
INSTALLERS = {
    "pulumi": lambda step: "pulumi/actions@" in step.get("uses", ""),
    "kubectl": lambda step: "dl.k8s.io" in step.get("run", ""),
    "espeak-ng": lambda step: (
        "apt-get install" in step.get("run", "") and "espeak-ng" in step.get("run", "")
    ),
    "python": lambda step: "actions/setup-python@" in step.get("uses", ""),
}
TOOLS = ("pulumi", "kubectl", "jq", "gh", "aws", "espeak-ng", "python", "curl", "docker")
# Jobs whose `pulumi up`/`destroy` of a preview stack runs kubectl (infra/preview_db.py).
KUBECTL_JOBS = {("preview", "deploy"), ("preview", "destroy"), ("reaper", "reap")}


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / f"{name}.yml").read_text())
    assert isinstance(doc, dict)
    # YAML 1.1 reads the key `on` as the boolean true.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def jobs(name: str) -> dict[str, dict[str, Any]]:
    found = load(name)["jobs"]
    assert isinstance(found, dict)
    return found


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, job_id, job) for name in NAMES for job_id, job in jobs(name).items()]


def runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


def script(job: dict[str, Any]) -> str:
    return "\n".join(runs(job))


def touches_a_stack(job: dict[str, Any]) -> bool:
    text = script(job)
    return bool(re.search(r"\bpulumi (up|preview|destroy|stack|config)\b", text)) or (
        "infra.reaper" in text
    )


def uses_a_step_with(job: dict[str, Any], text: str) -> bool:
    return any(text in step.get("uses", "") for step in job.get("steps", []))


def step_index(job: dict[str, Any], pattern: str) -> int:
    for index, step in enumerate(job["steps"]):
        if re.search(pattern, step.get("run", "")):
            return index
    raise AssertionError(f"no step runs {pattern!r}")


def test_the_four_workflows_exist_and_none_escapes_the_checks() -> None:
    assert {"ci", "preview", "reaper", "deploy"} <= set(NAMES)
    assert not list(WORKFLOWS.glob("*.yaml")), "name workflows *.yml so these tests read them"


def test_every_workflow_is_valid_for_github(tools_bin: Path) -> None:
    paths = [str(WORKFLOWS / f"{name}.yml") for name in NAMES]
    result = subprocess.run(
        [
            str(tools_bin / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *paths,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_every_action_is_pinned_to_a_commit(name: str) -> None:
    lines = [
        line for line in (WORKFLOWS / f"{name}.yml").read_text().splitlines() if "uses:" in line
    ]
    assert lines
    for line in lines:
        assert PINNED.match(line), f"{name}.yml: not pinned to a commit SHA: {line.strip()}"


@pytest.mark.parametrize("name", NAMES)
def test_the_token_is_read_only_unless_a_job_says_otherwise(name: str) -> None:
    assert load(name)["permissions"] == {"contents": "read"}
    for job_id, job in jobs(name).items():
        for scope, level in job.get("permissions", {}).items():
            assert level in ALLOWED_JOB_PERMISSIONS.get(scope, set()), (
                f"{name}.yml {job_id}: {scope}: {level}"
            )


def test_aws_credentials_come_from_oidc_only() -> None:
    for name, job_id, job in all_jobs():
        for step in job.get("steps", []):
            if "configure-aws-credentials" not in step.get("uses", ""):
                continue
            inputs = step.get("with", {})
            assert inputs.get("role-to-assume"), f"{name}.yml {job_id}: no role-to-assume"
            assert not {"aws-access-key-id", "aws-secret-access-key"} & set(inputs)
            assert job["permissions"]["id-token"] == "write", f"{name}.yml {job_id}"
    for name in NAMES:
        text = (WORKFLOWS / f"{name}.yml").read_text()
        assert not re.search(r"secrets\.AWS_|AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID", text), name


def test_only_jobs_with_cloud_credentials_may_mint_an_oidc_token() -> None:
    for name, job_id, job in all_jobs():
        if job.get("permissions", {}).get("id-token") == "write":
            assert any(
                "configure-aws-credentials" in step.get("uses", "") for step in job["steps"]
            ), f"{name}.yml {job_id}"


def test_every_job_touching_a_stack_has_a_concurrency_group() -> None:
    touching = [(n, j, job) for n, j, job in all_jobs() if touches_a_stack(job)]
    assert {(n, j) for n, j, _ in touching} >= {
        ("deploy", "build"),
        ("preview", "deploy"),
        ("preview", "destroy"),
        ("reaper", "reap"),
        ("deploy", "dev"),
        ("deploy", "staging"),
        ("deploy", "prod"),
    }
    for name, job_id, job in touching:
        assert job.get("concurrency", {}).get("group"), f"{name}.yml {job_id}"


def test_deploys_and_destroys_are_never_cancelled_half_way() -> None:
    for job_id in ("build", "dev", "staging", "prod"):
        assert jobs("deploy")[job_id]["concurrency"] == {
            "group": f"deploy-{job_id}",
            "cancel-in-progress": False,
        }
    preview = jobs("preview")
    # The same group per pull request: a destroy waits for the update it would race, and a
    # reopen's deploy for a running destroy. A job with cancel-in-progress cancels whatever
    # runs in its group, whatever that job's own setting: so no job in it may have it.
    assert preview["destroy"]["concurrency"]["group"] == preview["deploy"]["concurrency"]["group"]
    assert "pull_request.number" in preview["deploy"]["concurrency"]["group"]
    groups = [j["concurrency"] for j in preview.values()]
    shared = [c for c in groups if c["group"] == preview["deploy"]["concurrency"]["group"]]
    assert len(shared) == 2
    assert all(c["cancel-in-progress"] is False for c in shared)
    assert jobs("reaper")["reap"]["concurrency"]["cancel-in-progress"] is False


def test_pulumi_backend_and_secrets_come_from_settings_not_the_files() -> None:
    for name, job_id, job in all_jobs():
        if not re.search(r"\bpulumi ", script(job)):
            continue
        env = job["env"]
        assert env["PULUMI_BACKEND_URL"] == "${{ vars.PULUMI_BACKEND_URL }}", (name, job_id)
        assert env["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
        assert env["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    # Previews' stack files are written on the runner; base stacks' name theirs in the file.
    for name, job_id in (("preview", "deploy"), ("preview", "destroy"), ("reaper", "reap")):
        assert jobs(name)[job_id]["env"]["PULUMI_SECRETS_PROVIDER"] == (
            "${{ vars.PULUMI_SECRETS_PROVIDER }}"
        )


def test_secrets_are_given_to_jobs_never_to_a_whole_workflow() -> None:
    """A workflow-level secret reaches every job, the preview's image build (pull-request code)
    among them; a job-level one comes from that job's environment, so each environment (dev,
    staging, prod, preview) holds its own Pulumi token or passphrase."""
    for name in NAMES:
        assert "secrets." not in json.dumps(load(name).get("env", {})), name
    for name, job_id, job in all_jobs():
        if "secrets." in json.dumps(job):
            assert job.get("environment"), f"{name}.yml {job_id}: a secret outside an environment"


def test_every_aws_session_outlasts_prods_longest_up() -> None:
    """prod's `pulumi up` waits for the canary (~21 min) and migrations (up to 65 min), then
    may roll back: a 1-hour session would expire under it (the roles allow 7200 s,
    infra/github_oidc.py)."""
    found = 0
    for name, job_id, job in all_jobs():
        for step in job.get("steps", []):
            if "configure-aws-credentials" in step.get("uses", ""):
                assert step["with"]["role-duration-seconds"] == MAX_SESSION_SECONDS, (name, job_id)
                found += 1
    assert found == 8


def test_the_pulumi_cli_matches_the_sdk_pin() -> None:
    """Stack tags (the reaper's TTL) need a 3.211+ CLI on a self-managed backend; the pin
    moves with the SDK's."""
    pin = re.search(r'"pulumi==([\d.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert pin
    for name in ("preview", "reaper", "deploy"):
        assert load(name)["env"]["PULUMI_VERSION"] == pin[1], name


def test_ci_runs_the_repository_ci_entry_on_every_push_and_pull_request() -> None:
    on = load("ci")["on"]
    assert set(on) == {"push", "pull_request"}
    assert on["push"] is None
    assert on["pull_request"] is None
    assert "bash .ci/run" in script(jobs("ci")["test"])
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_previews_never_run_for_forks() -> None:
    for job_id, job in jobs("preview").items():
        assert PREVIEW_ONLY_SAME_REPO in job["if"], job_id
        # Nor for a pull request into another branch, whose copy of this file would run.
        assert (
            "github.event.pull_request.base.ref == github.event.repository.default_branch"
            in job["if"]
        )


def _checkout(job: dict[str, Any]) -> dict[str, Any]:
    [step] = [s for s in job["steps"] if "actions/checkout@" in s.get("uses", "")]
    return step


def test_previews_deploy_mains_program_with_the_pull_requests_images_only() -> None:
    """The pull request's code is built, never run with deploy credentials: the workflow is
    the default branch's (pull_request_target), only the build job checks out the pull
    request, and it holds no Pulumi token, seed or deploy role."""
    assert set(load("preview")["on"]) == {"pull_request_target"}
    preview = jobs("preview")
    build, deploy, destroy = preview["build"], preview["deploy"], preview["destroy"]
    assert _checkout(build)["with"]["ref"] == "${{ github.event.pull_request.head.sha }}"
    for job in (deploy, destroy):
        # github.sha under pull_request_target: the default branch's commit this file is from.
        assert _checkout(job)["with"]["ref"] == "${{ github.sha }}"
    text = (WORKFLOWS / "preview.yml").read_text()
    assert text.count("pull_request.head.sha }}") == 2  # the build's checkout, HEAD_SHA
    assert "HEAD_SHA" not in json.dumps([s.get("with", {}) for s in deploy["steps"]])
    # The build: its own environment and role, nothing of Pulumi's, no cache to poison.
    assert build["environment"] == "preview-build"
    assert deploy["environment"]["name"] == destroy["environment"] == "preview"
    assert "secrets." not in json.dumps(build)
    assert "pulumi" not in json.dumps(build).lower()
    assert not uses_a_step_with(build, "setup-python")
    for job in preview.values():
        for step in job["steps"]:
            assert "cache" not in step.get("with", {}), step
            assert "actions/cache" not in step.get("uses", "")
    # deploy and destroy run nothing of the pull request's: no build, no checkout of it.
    for job in (deploy, destroy):
        assert "docker" not in script(job)
        assert "head.sha" not in json.dumps(job)


def test_a_preview_is_built_once_planned_in_one_comment_deployed_then_smoked() -> None:
    assert load("preview")["on"]["pull_request_target"]["types"] == [
        "opened",
        "synchronize",
        "reopened",
        "closed",
    ]
    build, deploy = jobs("preview")["build"], jobs("preview")["deploy"]
    assert "docker buildx build" in script(build)
    assert deploy["needs"] == "build"
    assert "docker" not in script(deploy)  # the images build has pushed, by digest
    assert "record:image.prebuilt.api" in script(deploy)
    assert "record:image.prebuilt.models" in script(deploy)
    select = step_index(deploy, r"pulumi stack select --create \"\$STACK\"")
    tag = step_index(deploy, r"pulumi stack tag set record:expires-at")
    preview = step_index(deploy, r"pulumi preview")
    comment = step_index(deploy, r"record-preview:plan")
    # Resource operations only in a public comment; the diff goes to the log, with `up`.
    plan = deploy["steps"][preview]["run"]
    assert "pulumi preview --suppress-outputs --non-interactive" in plan
    assert "--diff" not in plan
    assert "--diff" in deploy["steps"][step_index(deploy, r"pulumi up --yes")]["run"]
    up = step_index(deploy, r"pulumi up --yes")
    smoke = step_index(deploy, r"record smoke --url \"\$URL\" --json")
    url = step_index(deploy, r"record-preview:url")
    assert select <= tag < preview < comment < up < smoke < url
    # One comment: found again by its marker and edited (infra/pr_comment.py pages through).
    plan_comment = deploy["steps"][comment]["run"]
    assert "-m infra.pr_comment --marker" in plan_comment
    assert deploy["env"]["PREVIEW_TTL_HOURS"] == "${{ vars.PREVIEW_TTL_HOURS || '72' }}"
    assert deploy["permissions"]["pull-requests"] == "write"


def test_a_closed_pull_request_destroys_its_preview_then_removes_the_stack() -> None:
    destroy = jobs("preview")["destroy"]
    assert "github.event.action == 'closed'" in destroy["if"]
    for job_id in ("build", "deploy"):
        assert "github.event.action != 'closed'" in jobs("preview")[job_id]["if"]
    text = script(destroy)
    assert text.index('pulumi destroy --yes --skip-preview --non-interactive --stack "$STACK"') < (
        text.index("-m infra.preview_objects")
    )
    assert text.index("-m infra.preview_objects") < (
        text.index('pulumi stack rm --yes --non-interactive --stack "$STACK"')
    )
    assert load("preview")["env"]["STACK"] == "preview-pr-${{ github.event.pull_request.number }}"


def test_the_reaper_runs_hourly_and_on_demand() -> None:
    on = load("reaper")["on"]
    [schedule] = on["schedule"]
    minute, hour, *rest = schedule["cron"].split()
    assert minute.isdigit()
    assert (hour, rest) == ("*", ["*", "*", "*"])
    assert "workflow_dispatch" in on
    reap = jobs("reaper")["reap"]
    assert ".venv/bin/python -m infra.reaper" in script(reap)
    assert reap["steps"][-1]["env"]["GITHUB_TOKEN"] == "${{ github.token }}"


def test_the_reaper_command_the_workflow_runs_exists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.reaper", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout


def test_main_goes_to_dev_then_staging_then_prod_behind_environments() -> None:
    on = load("deploy")["on"]
    assert on["push"] == {"branches": ["main"]}
    deploy = jobs("deploy")
    assert "needs" not in deploy["build"]
    # workflow_dispatch from another branch builds, so deploys, nothing.
    assert deploy["build"]["if"] == "github.ref == 'refs/heads/main'"
    assert deploy["dev"]["needs"] == "build"
    assert deploy["staging"]["needs"] == ["build", "dev"]
    assert deploy["prod"]["needs"] == ["build", "staging"]
    for stack in ("dev", "staging", "prod"):
        assert deploy[stack]["environment"]["name"] == stack
        assert deploy[stack]["env"]["STACK"] == stack
        assert 'pulumi up --yes --skip-preview --non-interactive --stack "$STACK"' in script(
            deploy[stack]
        )


def test_every_pulumi_up_is_followed_by_a_smoke_check() -> None:
    ups = [(n, j, job) for n, j, job in all_jobs() if "pulumi up" in script(job)]
    assert len(ups) == 4
    for name, job_id, job in ups:
        up = step_index(job, r"pulumi up --yes")
        smoke = step_index(job, r"record smoke --url \"\$URL\" --json")
        assert up < smoke, f"{name}.yml {job_id}"
        assert job["steps"][smoke]["env"]["URL"] == "${{ steps.up.outputs.url }}"


def test_main_is_built_once_and_every_stack_runs_those_digests() -> None:
    """infra/images.py would build per stack: three builds of one commit are three images. The
    build job pushes once; each stack takes the same digest into its own repositories and
    deploys it as record:image.prebuilt.*."""
    deploy = jobs("deploy")
    assert "docker buildx build" in script(deploy["build"])
    for stack in ("dev", "staging", "prod"):
        job = deploy[stack]
        assert job["env"]["API_IMAGE"] == "${{ needs.build.outputs.api }}"
        assert job["env"]["MODELS_IMAGE"] == "${{ needs.build.outputs.models }}"
        assert "docker buildx build" not in script(job)
        promote = step_index(job, r"record:image\.prebuilt")
        assert promote < step_index(job, r"pulumi up --yes")
        assert job["steps"][promote]["run"] == deploy["dev"]["steps"][promote]["run"]


def test_no_expression_is_expanded_inside_a_shell_script() -> None:
    """Values reach scripts through env: an expression GitHub pastes into a script (a branch
    name, a title) would be run as shell."""
    for name, job_id, job in all_jobs():
        for text in runs(job):
            assert "${{" not in text, f"{name}.yml {job_id}"


def test_every_run_block_is_valid_bash(tmp_path: Path) -> None:
    checked = 0
    for name, job_id, job in all_jobs():
        for index, text in enumerate(runs(job)):
            path = tmp_path / f"{name}-{job_id}-{index}.sh"
            path.write_text(text)
            result = subprocess.run(
                ["bash", "-n", str(path)], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{name}.yml {job_id} step {index}: {result.stderr}"
            checked += 1
    assert checked >= 15


def test_bash_n_catches_what_it_should(tmp_path: Path) -> None:
    """The check above can fail: an unterminated if is a syntax error."""
    path = tmp_path / "broken.sh"
    path.write_text('if [[ -n "$x" ]]; then\n  echo x\n')
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False).returncode


def _step(workflow: str, job_id: str, name: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = jobs(workflow)[job_id]["steps"]
    [step] = [s for s in steps if s.get("name", "").startswith(name)]
    return step


FAKE_TOOL = """#!{python}
import json, sys
args = sys.argv[1:]
line = " ".join(args)
reads = " --secret " in f" {{line}} " or " --password-stdin " in f" {{line}} "
stdin = sys.stdin.read() if reads else ""
with open({log!r}, "a") as log:
    log.write(f"{{line}} | {{stdin}}\\n")
# The first answer whose key the command line starts with: (stdout, exit status).
for prefix, (out, status) in json.loads({answers!r}).items():
    if line.startswith(prefix):
        if out:
            print(out)
        sys.exit(status)
"""


def _fake(bin_dir: Path, name: str, answers: dict[str, tuple[str, int]] | None = None) -> Path:
    """A ``name`` on PATH that logs each call (and what it read on stdin for a --secret) and
    answers the calls ``answers`` names."""
    log = bin_dir / f"{name}.log"
    fake = bin_dir / name
    fake.write_text(
        FAKE_TOOL.format(python=sys.executable, log=str(log), answers=json.dumps(answers or {}))
    )
    fake.chmod(0o755)
    return log


STAGING_REPO = "1.dkr.ecr.eu-west-1.amazonaws.com/record-staging"
API_IMAGE = f"{STAGING_REPO}/api@sha256:" + "a" * 64
MODELS_IMAGE = f"{STAGING_REPO}/models@sha256:" + "b" * 64
BASE_OUTPUTS = {
    "stack output apiRepositoryUrl --stack staging": (f"{STAGING_REPO}/api", 0),
    "stack output modelsRepositoryUrl --stack staging": (f"{STAGING_REPO}/models", 0),
    "stack output bucketName --stack staging": ("record-staging-objects", 0),
    "stack output previewDomain --stack staging": ("preview.example.org", 0),
}


def _fake_pulumi(
    bin_dir: Path, stacks: str = "[]", answers: dict[str, tuple[str, int]] | None = None
) -> Path:
    """A `pulumi` that logs each call, lists ``stacks`` (made by main's program unless
    ``answers`` says otherwise) and knows the base stack's outputs."""
    return _fake(
        bin_dir,
        "pulumi",
        {
            "stack ls": (stacks, 0),
            "stack tag ls --json": (json.dumps({"record:program": "main"}), 0),
            **BASE_OUTPUTS,
            **(answers or {}),
        },
    )


def _run_step(
    step: dict[str, Any], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


PREVIEW_TEMPLATE = "config:\n  record:preview:\n    baseStack: staging\n"


def test_the_preview_stack_config_is_written_afresh_with_stable_secrets(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(bin_dir)
    work = tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (work / "Pulumi.preview.yaml").write_text((REPO_ROOT / "Pulumi.preview.yaml").read_text())
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PR": "42",
        "STACK": "preview-pr-42",
        "PREVIEW_TTL_HOURS": "72",
        "API_IMAGE": API_IMAGE,
        "MODELS_IMAGE": MODELS_IMAGE,
        "PULUMI_SECRETS_PROVIDER": "awskms://alias/record-staging-pulumi?region=eu-west-1",
        "PREVIEW_SECRET_SEED": "s33d",
    }
    step = _step("preview", "deploy", "Select the stack")

    result = _run_step(step, work, env)
    assert result.returncode == 0, result.stderr
    first = log.read_text()
    log.unlink()
    assert _run_step(step, work, env).returncode == 0

    stack_file = (work / "Pulumi.preview-pr-42.yaml").read_text()
    assert stack_file.startswith(f"secretsprovider: {env['PULUMI_SECRETS_PROVIDER']}\n")
    assert stack_file.count("secretsprovider:") == 1  # written afresh, not appended to
    assert yaml.safe_load(stack_file)["config"]["record:preview"]["baseStack"]
    calls = [c for c in first.splitlines() if not c.startswith(("stack output ", "stack ls "))]
    assert calls[0].startswith(
        "stack select --create preview-pr-42 --non-interactive --secrets-provider awskms://"
    )
    assert "config set --path record:preview.prNumber 42 | " in calls
    assert "config set record:domain pr-42.preview.example.org | " in calls
    assert f"config set --path record:image.prebuilt.api {env['API_IMAGE']} | " in calls
    secrets = {c.split(" | ")[0]: c.split(" | ")[1] for c in calls if " --secret " in c}
    assert set(secrets) == {
        "config set --secret record:dbAppPassword",
        "config set --secret record:modelServerApiKey",
    }
    values = list(secrets.values())
    # On stdin, never on a command line; 256 bits each, one per key, the same next push.
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in values)
    assert values[0] != values[1]
    assert "s33d" not in first

    # The next push sets the same config and secrets (only the expiry moves on).
    def unexpiring(text: str) -> list[str]:
        return [c for c in text.splitlines() if "record:expires-at" not in c]

    assert unexpiring(first) == unexpiring(log.read_text())
    [tag] = [c for c in calls if c.startswith("stack tag set record:expires-at ")]
    expires = parse_expiry(tag.split()[4])
    assert expires is not None
    hours = (expires - datetime.now(UTC)).total_seconds() / 3600
    assert 71.9 < hours <= 72


def test_the_preview_secrets_differ_per_pull_request(tmp_path: Path) -> None:
    step = _step("preview", "deploy", "Select the stack")
    seen = []
    for pr in ("1", "2"):
        bin_dir = tmp_path / pr / "bin"
        bin_dir.mkdir(parents=True)
        log = _fake_pulumi(bin_dir)
        work = tmp_path / pr / "work"
        (work / ".venv" / "bin").mkdir(parents=True)
        (work / ".venv" / "bin" / "python").symlink_to(sys.executable)
        (work / "Pulumi.preview.yaml").write_text(PREVIEW_TEMPLATE)
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "PR": pr,
            "STACK": f"preview-pr-{pr}",
            "PREVIEW_TTL_HOURS": "1",
            "API_IMAGE": API_IMAGE,
            "MODELS_IMAGE": MODELS_IMAGE,
            "PULUMI_SECRETS_PROVIDER": "",
            "PREVIEW_SECRET_SEED": "s33d",
        }
        assert _run_step(step, work, env).returncode == 0
        text = log.read_text()
        assert "--secrets-provider" not in text  # Pulumi Cloud's or the passphrase's own
        seen.append([c.split(" | ")[1] for c in text.splitlines() if "--secret " in c])
    assert not set(seen[0]) & set(seen[1])


def test_the_preview_refuses_to_run_without_its_seed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(bin_dir)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STACK": "preview-pr-1", "PREVIEW_SECRET_SEED": ""}
    result = _run_step(_step("preview", "deploy", "Select the stack"), tmp_path, env)
    assert result.returncode != 0
    assert "PREVIEW_SECRET_SEED" in result.stderr
    assert not log.exists()


@pytest.mark.parametrize(
    ("stacks", "expected"),
    [
        ("[]", []),
        ('[{"name": "preview-pr-7"}]', ["stack tag", "destroy", "stack rm"]),
        ('[{"name": "acme/preview-pr-7"}]', ["stack tag", "destroy", "stack rm"]),
        ('[{"name": "preview-pr-70"}, {"name": "staging"}]', []),
    ],
)
def test_closing_destroys_the_stack_and_its_objects_if_there_is_one(
    tmp_path: Path, stacks: str, expected: list[str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(bin_dir, stacks)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python_log = _fake(tmp_path / ".venv" / "bin", "python")
    (tmp_path / "Pulumi.preview.yaml").write_text(PREVIEW_TEMPLATE)
    kms = "awskms://alias/record-staging-pulumi?region=eu-west-1"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STACK": "preview-pr-7", "PR": "7"}
    env["PULUMI_SECRETS_PROVIDER"] = kms
    result = _run_step(_step("preview", "destroy", "pulumi destroy"), tmp_path, env)
    assert result.returncode == 0, result.stderr
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()][1:]
    calls = [c for c in calls if not c.startswith("stack output ")]
    assert [" ".join(c.split()[:2]).removesuffix(" --yes") for c in calls] == expected
    assert all("--stack preview-pr-7" in c for c in calls)
    stack_file = tmp_path / "Pulumi.preview-pr-7.yaml"
    if expected:
        assert stack_file.read_text() == f"secretsprovider: {kms}\n"
        # Every version under its prefix of the base's bucket (infra/preview_objects.py).
        assert python_log.read_text().splitlines() == [
            "-m infra.preview_objects --bucket record-staging-objects --prefix previews/pr-7/ | "
        ]
    else:
        assert not python_log.exists()


def _locked_stack_env(tmp_path: Path, reaper_runs: int) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(
        bin_dir,
        '[{"name": "preview-pr-9", "updateInProgress": true},'
        ' {"name": "preview-pr-90", "updateInProgress": true}]',
    )
    _fake(bin_dir, "curl", {"": (json.dumps({"total_count": reaper_runs}), 0)})
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "Pulumi.preview.yaml").write_text(PREVIEW_TEMPLATE)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PR": "9",
        "STACK": "preview-pr-9",
        "PREVIEW_TTL_HOURS": "72",
        "API_IMAGE": API_IMAGE,
        "MODELS_IMAGE": MODELS_IMAGE,
        "PULUMI_SECRETS_PROVIDER": "",
        "PREVIEW_SECRET_SEED": "s33d",
        "GH_TOKEN": "t",
        "GITHUB_REPOSITORY": "acme/record",
    }
    return env, log


def test_a_stack_left_locked_by_an_earlier_run_is_unlocked_first(tmp_path: Path) -> None:
    env, log = _locked_stack_env(tmp_path, reaper_runs=0)
    result = _run_step(_step("preview", "deploy", "Select the stack"), tmp_path, env)
    assert result.returncode == 0, result.stderr
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    cancels = [c for c in calls if c.startswith("cancel")]
    assert cancels == ["cancel --yes --non-interactive --stack preview-pr-9"]
    assert calls.index(cancels[0]) < calls.index("config set --path record:preview.prNumber 9")
    curl = (tmp_path / "bin" / "curl.log").read_text()
    assert "/repos/acme/record/actions/workflows/reaper.yml/runs?status=in_progress" in curl


def test_a_lock_is_never_cancelled_while_the_reaper_runs(tmp_path: Path) -> None:
    """The reaper may be destroying this very stack: cancelling would leave it half-destroyed."""
    env, log = _locked_stack_env(tmp_path, reaper_runs=1)
    result = _run_step(_step("preview", "deploy", "Select the stack"), tmp_path, env)
    assert result.returncode == 1
    assert "while the reaper runs" in result.stdout
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    assert not [c for c in calls if c.startswith(("cancel", "config set"))]


@pytest.mark.parametrize(
    "image",
    [
        "attacker.example/record@sha256:" + "a" * 64,  # another registry
        f"{STAGING_REPO}/api:latest",  # a tag, not a digest
        f"{STAGING_REPO}/api-evil@sha256:" + "a" * 64,  # a repository named like it
        f"{STAGING_REPO}/api@sha256:" + "a" * 63,
        "",
    ],
)
def test_the_deploy_takes_only_digests_in_stagings_repositories(tmp_path: Path, image: str) -> None:
    """The build job ran pull-request code, and its outputs are whatever that code printed."""
    env, log = _locked_stack_env(tmp_path, reaper_runs=0)
    env["API_IMAGE"] = image
    result = _run_step(_step("preview", "deploy", "Select the stack"), tmp_path, env)
    assert result.returncode == 1
    assert "is not" in result.stdout
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    assert all(c.startswith("stack output ") for c in calls)


def test_kubectl_matches_the_clusters_minor_and_its_checksum_is_checked(tmp_path: Path) -> None:
    versions = {load(name)["env"]["KUBECTL_VERSION"] for name in ("preview", "reaper")}
    assert len(versions) == 1
    [version] = versions
    assert version.rsplit(".", 1)[0] == DEFAULT_KUBERNETES_VERSION
    step = _step("preview", "deploy", "Install kubectl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A curl that writes a tiny "kubectl" that prints its version.
    curl = bin_dir / "curl"
    curl.write_text(
        "#!/bin/bash\nwhile [[ $# -gt 0 ]]; do if [[ $1 == -o ]]; then out=$2; fi; shift; done\n"
        'printf \'#!/bin/sh\\necho "Client Version: v1.35.0"\\n\' >"$out"\n'
    )
    curl.chmod(0o755)
    body = b'#!/bin/sh\necho "Client Version: v1.35.0"\n'
    import hashlib

    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_PATH": str(tmp_path / "github_path"),
        "KUBECTL_VERSION": version,
        "KUBECTL_SHA256": hashlib.sha256(body).hexdigest(),
    }
    result = _run_step(step, tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "github_path").read_text() == f"{tmp_path / 'bin'}\n"
    # A download that is not the pinned file stops the job.
    (tmp_path / "github_path").unlink()
    result = _run_step(step, tmp_path, {**env, "KUBECTL_SHA256": "0" * 64})
    assert result.returncode != 0
    assert not (tmp_path / "github_path").exists()


def _called(tool: str, text: str) -> bool:
    """Whether shell ``text`` runs ``tool`` as a command (comments and messages aside)."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    code = re.sub(r'"[^"$]*"', '""', code)  # plain strings (messages), not expansions
    command = r"(?:^|[|;&({]|\$\(|\bthen|\bdo|\belse|!|\bif)\s*"
    prefix = r"(?:\S*/)?" if tool == "python" else ""
    return bool(re.search(command + prefix + re.escape(tool) + r"\b", code, re.MULTILINE))


def test_the_tool_check_sees_calls_and_ignores_words() -> None:
    assert _called("kubectl", "x=$(kubectl get pods)")
    assert _called("gh", "  gh api repos")
    assert _called("python", ".venv/bin/python -m infra.reaper")
    assert _called("jq", "pulumi stack ls | jq -e .")
    assert not _called("kubectl", '# kubectl is too old\necho "install kubectl"')
    assert not _called("gh", "echo high")


def test_every_tool_a_step_calls_is_there_on_its_runner() -> None:
    """The in-VPC runner (standard:7.0) has no gh and an old kubectl, and cannot reach apt over
    port 80 unless its security group allows it: a tool is installed by an earlier step, or
    both runner images have it (a job pinned to ubuntu-24.04: that image)."""
    for name, job_id, job in all_jobs():
        if "container" in job:
            continue  # ci.yml runs in its own image, which .ci/run provisions
        pinned = job["runs-on"] == "ubuntu-24.04"
        present = (
            RUNNER_TOOLS["ubuntu-24.04"]
            if pinned
            else RUNNER_TOOLS["ubuntu-24.04"] & RUNNER_TOOLS["codebuild-standard-7.0"]
        )
        installed: set[str] = set()
        for step in job["steps"]:
            for tool, installs in INSTALLERS.items():
                if installs(step):
                    installed.add(tool)
            for tool in TOOLS:
                if _called(tool, step.get("run", "")):
                    assert tool in present | installed, f"{name}.yml {job_id}: {tool} not installed"
        if (name, job_id) in KUBECTL_JOBS:
            install = next(i for i, st in enumerate(job["steps"]) if INSTALLERS["kubectl"](st))
            assert install < step_index(job, r"pulumi (up|destroy)|infra\.reaper")


def _deploy_env(tmp_path: Path, answers: dict[str, tuple[str, int]]) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake(bin_dir, "pulumi", answers)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STACK": "prod"}, log


PROD_REPO = "1.dkr.ecr.eu-west-1.amazonaws.com/record-prod"
GOOD_API = f"{PROD_REPO}/api@sha256:" + "c" * 64
GOOD_MODELS = f"{PROD_REPO}/models@sha256:" + "d" * 64


def test_a_passed_smoke_check_records_the_last_good_digests(tmp_path: Path) -> None:
    for stack in ("dev", "staging", "prod"):
        step_names = [s.get("name", "") for s in jobs("deploy")[stack]["steps"]]
        assert step_names.index("Smoke check") + 1 == step_names.index(
            "Remember these images as the last good ones"
        )
    env, log = _deploy_env(
        tmp_path,
        {
            "config get --path record:image.prebuilt.api": (GOOD_API, 0),
            "config get --path record:image.prebuilt.models": (GOOD_MODELS, 0),
        },
    )
    step = _step("deploy", "prod", "Remember these images")
    assert "if" not in step  # only after a passed smoke check
    result = _run_step(step, tmp_path, env)
    assert result.returncode == 0, result.stderr
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    assert f"stack tag set record:last-good-api {GOOD_API} --stack prod --non-interactive" in calls
    assert (
        f"stack tag set record:last-good-models {GOOD_MODELS} --stack prod --non-interactive"
        in calls
    )


def test_a_failed_smoke_check_on_prod_rolls_back_through_pulumi(tmp_path: Path) -> None:
    """Back to the last good digests by `pulumi up`: Pulumi's state then says what runs, and
    the next `up` of the failed commit changes prod again (a kubectl patch would be invisible
    to it). The job fails either way."""
    prod = jobs("deploy")["prod"]
    rollback = prod["steps"][step_index(prod, r"stack tag get record:last-good-api")]
    assert rollback["if"] == "failure() && steps.smoke.outcome == 'failure'"
    assert step_index(prod, r"record smoke") < step_index(prod, r"stack tag get")
    assert not _called("kubectl", script(prod))
    env, log = _deploy_env(
        tmp_path,
        {
            "stack tag get record:last-good-api": (GOOD_API, 0),
            "stack tag get record:last-good-models": (GOOD_MODELS, 0),
            "stack output apiRepositoryUrl --stack prod": (f"{PROD_REPO}/api", 0),
            "stack output modelsRepositoryUrl --stack prod": (f"{PROD_REPO}/models", 0),
        },
    )
    result = _run_step(rollback, tmp_path, env)
    assert result.returncode == 1
    assert f"rolled back by pulumi up to {GOOD_API}" in result.stdout
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    setting = [
        f"config set --path record:image.prebuilt.api {GOOD_API} --stack prod",
        f"config set --path record:image.prebuilt.models {GOOD_MODELS} --stack prod",
    ]
    up = "up --yes --skip-preview --non-interactive --stack prod"
    assert calls[-3:] == [*setting, up]


def test_a_last_good_tag_outside_prod_s_repositories_is_not_deployed(tmp_path: Path) -> None:
    """Attacker review: whoever can write prod's state could write its tags; the rollback takes
    only a digest in prod's own repositories, as the deploy does."""
    elsewhere = "6.dkr.ecr.eu-west-1.amazonaws.com/evil/api@sha256:" + "c" * 64
    env, log = _deploy_env(
        tmp_path,
        {
            "stack tag get record:last-good-api": (elsewhere, 0),
            "stack tag get record:last-good-models": (GOOD_MODELS, 0),
            "stack output apiRepositoryUrl --stack prod": (f"{PROD_REPO}/api", 0),
            "stack output modelsRepositoryUrl --stack prod": (f"{PROD_REPO}/models", 0),
        },
    )
    result = _run_step(_step("deploy", "prod", "Roll back"), tmp_path, env)
    assert result.returncode == 1
    assert "not rolling back" in result.stdout
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    assert not [c for c in calls if c.startswith(("up", "config set"))]


def test_without_a_last_good_tag_prod_is_not_touched(tmp_path: Path) -> None:
    env, log = _deploy_env(tmp_path, {"stack tag get": ("error: stack tag not found", 255)})
    rollback = _step("deploy", "prod", "Roll back")
    result = _run_step(rollback, tmp_path, env)
    assert result.returncode == 1
    assert "no record:last-good-api tag" in result.stdout
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    assert not [c for c in calls if c.startswith(("up", "config set"))]


@pytest.mark.parametrize(("copied", "status"), [("same", 0), ("other", 1)])
def test_each_stack_deploys_the_builds_digest_from_its_own_repository(
    tmp_path: Path, copied: str, status: int
) -> None:
    dev = "1.dkr.ecr.eu-west-1.amazonaws.com/record-dev"
    digest = "sha256:" + "e" * 64
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pulumi = _fake(
        bin_dir,
        "pulumi",
        {
            "stack output apiRepositoryUrl --stack staging": (f"{STAGING_REPO}/api", 0),
            "stack output modelsRepositoryUrl --stack staging": (f"{STAGING_REPO}/models", 0),
        },
    )
    found = digest if copied == "same" else "sha256:" + "f" * 64
    aws = _fake(
        bin_dir,
        "aws",
        {
            "ecr get-login-password": ("pw", 0),
            # Not there before the copy (no --query), there after it.
            "ecr describe-images --repository-name record-staging/api --image-ids "
            f"imageDigest={digest} --query": (found, 0),
            "ecr describe-images --repository-name record-staging/models --image-ids "
            f"imageDigest={digest} --query": (found, 0),
            "ecr describe-images": ("", 254),
        },
    )
    docker = _fake(bin_dir, "docker")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "STACK": "staging",
        "GITHUB_SHA": "0123456789abcdef",
        "API_IMAGE": f"{dev}/api@{digest}",
        "MODELS_IMAGE": f"{dev}/models@{digest}",
    }
    result = _run_step(_step("deploy", "staging", "Take the build"), tmp_path, env)
    assert result.returncode == status, result.stdout + result.stderr
    copies = [c for c in docker.read_text().splitlines() if "imagetools" in c]
    assert copies[0].startswith(
        f"buildx imagetools create --tag {STAGING_REPO}/api:record-staging-0123456789ab "
        f"{dev}/api@{digest}"
    )
    calls = [c.split(" | ")[0] for c in pulumi.read_text().splitlines()]
    sets = [c for c in calls if c.startswith("config set")]
    if status == 0:
        assert sets == [
            f"config set --path record:image.prebuilt.api {STAGING_REPO}/api@{digest} "
            "--stack staging",
            f"config set --path record:image.prebuilt.models {STAGING_REPO}/models@{digest} "
            "--stack staging",
        ]
    else:
        assert sets == []
        assert "not the image the earlier stacks ran" in result.stdout
    assert "get-login-password" in aws.read_text()


FAKE_REAPER_PYTHON = """#!/bin/bash
echo "$*" >>{log}
if [[ "$*" == "-m infra.reaper" ]]; then
  echo "3 preview stack(s) at 2026-12-04T06:00:00+00:00"
  echo "reap preview-pr-7: pull request closed"
  echo "  destroyed and removed preview-pr-7"
  echo "reap acme/record/preview-pr-8: expired"
  echo "  destroyed and removed acme/record/preview-pr-8"
  echo "reap preview-pr-9: expired"
  echo "  error: preview-pr-9 not reaped: destroy failed"
  exit {status}
fi
if [[ "$*" == *"previews/pr-8/"* ]]; then exit {purge_status}; fi
"""


@pytest.mark.parametrize(
    ("reaper_status", "purge_status", "status"), [(0, 0, 0), (1, 0, 1), (0, 1, 1)]
)
def test_the_reaper_deletes_the_objects_of_what_it_destroyed(
    tmp_path: Path, reaper_status: int, purge_status: int, status: int
) -> None:
    # The lines the step reads are the reaper's own (infra/reaper.py prints them so).
    reaper_source = (REPO_ROOT / "infra" / "reaper.py").read_text()
    assert 'print(f"  destroyed and removed {decision.stack}", file=out)' in reaper_source
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(bin_dir)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    calls = tmp_path / "python.log"
    python = venv / "python"
    python.write_text(
        FAKE_REAPER_PYTHON.format(log=calls, status=reaper_status, purge_status=purge_status)
    )
    python.chmod(0o755)
    (tmp_path / "Pulumi.preview.yaml").write_text(PREVIEW_TEMPLATE)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "DRY_RUN": "false",
    }
    result = _run_step(_step("reaper", "reap", "Reap"), tmp_path, env)
    assert result.returncode == status, result.stdout + result.stderr
    assert calls.read_text().splitlines() == [
        "-m infra.reaper",
        "-m infra.preview_objects --bucket record-staging-objects --prefix previews/pr-7/",
        "-m infra.preview_objects --bucket record-staging-objects --prefix previews/pr-8/",
    ]
    assert "stack output bucketName --stack staging" in log.read_text()
    if purge_status:
        assert "objects of preview-pr-8 were not deleted" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("program", ["main", "", "pull-request"])
def test_only_a_stack_main_s_program_made_is_updated_or_destroyed(
    tmp_path: Path, program: str
) -> None:
    """Attacker review: a preview updated before previews ran main's program holds state its
    pull request's own program wrote (a Command's delete it chose, say), which an update or a
    destroy would run with the preview role. The deploy and the destroy touch an existing
    stack only with main's tag (record:program=main), and the deploy tags the stacks it makes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tags = json.dumps({"record:program": program} if program else {})
    log = _fake_pulumi(bin_dir, '[{"name": "preview-pr-7"}]', {"stack tag ls --json": (tags, 0)})
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PR": "7",
        "STACK": "preview-pr-7",
        "PREVIEW_TTL_HOURS": "72",
        "API_IMAGE": API_IMAGE,
        "MODELS_IMAGE": MODELS_IMAGE,
        "PREVIEW_SECRET_SEED": "s33d",
    }
    for job, step in (("deploy", "Select the stack"), ("destroy", "pulumi destroy")):
        work = tmp_path / job
        (work / ".venv" / "bin").mkdir(parents=True)
        if job == "deploy":  # it derives the secrets with the venv's Python
            (work / ".venv" / "bin" / "python").symlink_to(sys.executable)
        else:  # the objects' purge (infra/preview_objects.py), logged
            _fake(work / ".venv" / "bin", "python")
        (work / "Pulumi.preview.yaml").write_text(PREVIEW_TEMPLATE)
        result = _run_step(_step("preview", job, step), work, env)
        calls = log.read_text()
        log.unlink()
        if program == "main":
            assert result.returncode == 0, result.stderr
            assert "stack tag set record:program" not in calls  # it has it
        else:
            assert result.returncode != 0
            assert "pulumi stack rm --force preview-pr-7" in result.stdout + result.stderr
            assert "destroy" not in calls
            assert "config set" not in calls
            assert "stack select" not in calls


def test_a_stack_the_deploy_creates_is_tagged_as_main_s(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(bin_dir)  # no stack yet
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "Pulumi.preview.yaml").write_text(PREVIEW_TEMPLATE)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PR": "7",
        "STACK": "preview-pr-7",
        "PREVIEW_TTL_HOURS": "72",
        "API_IMAGE": API_IMAGE,
        "MODELS_IMAGE": MODELS_IMAGE,
        "PREVIEW_SECRET_SEED": "s33d",
    }
    result = _run_step(_step("preview", "deploy", "Select the stack"), tmp_path, env)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    tag = next(i for i, c in enumerate(calls) if c.startswith("stack tag set record:program main"))
    select = next(i for i, c in enumerate(calls) if c.startswith("stack select --create"))
    assert select < tag
