"""The GitHub workflows (.github/workflows) hold to their contract: valid for GitHub's schema,
actions pinned by commit, read-only unless a job needs more, OIDC instead of AWS keys, one
update of a stack at a time, previews only for this repository's branches and destroyed on
close, a reaper on a schedule, dev -> staging -> prod behind environments, a smoke check after
every `pulumi up`, and shell that parses."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan import REPO_ROOT, Plan, render
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
}


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
        ("preview", "build"),
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
    for job_id in ("dev", "staging", "prod"):
        assert jobs("deploy")[job_id]["concurrency"] == {
            "group": f"deploy-{job_id}",
            "cancel-in-progress": False,
        }
    preview = jobs("preview")
    # The same group per pull request: a destroy waits for the update it would race.
    assert preview["destroy"]["concurrency"]["group"] == preview["deploy"]["concurrency"]["group"]
    assert "pull_request.number" in preview["deploy"]["concurrency"]["group"]
    assert preview["destroy"]["concurrency"]["cancel-in-progress"] is False
    assert preview["deploy"]["concurrency"]["cancel-in-progress"] is True
    assert jobs("reaper")["reap"]["concurrency"]["cancel-in-progress"] is False


def test_pulumi_backend_and_secrets_come_from_settings_not_the_files() -> None:
    for name in ("preview", "reaper", "deploy"):
        env = load(name)["env"]
        assert env["PULUMI_BACKEND_URL"] == "${{ vars.PULUMI_BACKEND_URL }}"
        assert env["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
        assert env["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    # Previews' stack files are written on the runner; base stacks' name theirs in the file.
    for name in ("preview", "reaper"):
        assert load(name)["env"]["PULUMI_SECRETS_PROVIDER"] == "${{ vars.PULUMI_SECRETS_PROVIDER }}"


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


def test_a_preview_is_built_once_planned_in_one_comment_deployed_then_smoked() -> None:
    assert load("preview")["on"]["pull_request"]["types"] == [
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
    up = step_index(deploy, r"pulumi up --yes")
    smoke = step_index(deploy, r"record smoke --url \"\$URL\" --json")
    url = step_index(deploy, r"record-preview:url")
    assert select <= tag < preview < comment < up < smoke < url
    # One comment: found again by its marker and edited, across every page of comments.
    plan_comment = deploy["steps"][comment]["run"]
    assert "--paginate" in plan_comment
    assert "--method PATCH" in plan_comment
    assert deploy["env"]["PREVIEW_TTL_HOURS"] == "${{ vars.PREVIEW_TTL_HOURS || '72' }}"
    assert deploy["permissions"]["pull-requests"] == "write"


def test_a_closed_pull_request_destroys_its_preview_then_removes_the_stack() -> None:
    destroy = jobs("preview")["destroy"]
    assert "github.event.action == 'closed'" in destroy["if"]
    for job_id in ("build", "deploy"):
        assert "github.event.action != 'closed'" in jobs("preview")[job_id]["if"]
    text = script(destroy)
    assert text.index('pulumi destroy --yes --skip-preview --non-interactive --stack "$STACK"') < (
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
    assert "needs" not in deploy["dev"]
    # workflow_dispatch from another branch deploys nothing; staging and prod need dev.
    assert deploy["dev"]["if"] == "github.ref == 'refs/heads/main'"
    assert deploy["staging"]["needs"] == "dev"
    assert deploy["prod"]["needs"] == "staging"
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


@pytest.fixture(scope="module")
def prod_plan() -> Plan:
    """Prod alone: the Rollout the abort names is prod's."""
    return render("prod")


def test_a_failed_smoke_check_on_prod_aborts_the_rollout(prod_plan: Plan) -> None:
    prod = jobs("deploy")["prod"]
    abort_at = step_index(prod, r'"abort":true')
    abort = prod["steps"][abort_at]
    assert abort["if"] == "failure() && steps.smoke.outcome == 'failure'"
    assert abort_at > step_index(prod, r"record smoke")
    assert "--subresource=status" in abort["run"]
    assert abort["run"].rstrip().endswith("exit 1")
    # The Rollout it names is the one prod renders, in the namespace the stack exports.
    [rollout] = [m for m in prod_plan.manifests if m.get("kind") == "Rollout"]
    assert rollout["metadata"]["name"] == prod["env"]["ROLLOUT"]
    assert rollout["metadata"]["namespace"] == "record-prod"
    assert "pulumi stack output namespace" in abort["run"]
    # Neither staging nor dev touches a Rollout by hand.
    for stack in ("dev", "staging"):
        assert "rollout" not in script(jobs("deploy")[stack]).lower()


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


def _fake_pulumi(bin_dir: Path, stacks: str = "[]") -> Path:
    """A `pulumi` that logs each call (and what it read on stdin) and lists ``stacks``."""
    log = bin_dir / "pulumi.log"
    fake = bin_dir / "pulumi"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1 $2" == "stack ls" ]]; then echo \'{stacks}\'; fi\n'
        'if [[ " $* " == *" --secret "* ]]; then stdin=$(cat); else stdin=; fi\n'
        f'printf "%s | %s\\n" "$*" "$stdin" >>{log}\n'
    )
    fake.chmod(0o755)
    return log


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
        "PREVIEW_DOMAIN": "preview.example.org",
        "PREVIEW_TTL_HOURS": "72",
        "API_IMAGE": "1.dkr.ecr.eu-west-1.amazonaws.com/record-staging/api@sha256:" + "a" * 64,
        "MODELS_IMAGE": "1.dkr.ecr.eu-west-1.amazonaws.com/record-staging/models@sha256:"
        + "b" * 64,
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
    calls = first.splitlines()
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
        (work / "Pulumi.preview.yaml").write_text("config: {}\n")
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "PR": pr,
            "STACK": f"preview-pr-{pr}",
            "PREVIEW_DOMAIN": "p.example.org",
            "PREVIEW_TTL_HOURS": "1",
            "API_IMAGE": "a",
            "MODELS_IMAGE": "m",
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
        ('[{"name": "preview-pr-7"}]', ["destroy", "stack rm"]),
        ('[{"name": "acme/preview-pr-7"}]', ["destroy", "stack rm"]),
        ('[{"name": "preview-pr-70"}, {"name": "staging"}]', []),
    ],
)
def test_closing_destroys_the_stack_if_there_is_one(
    tmp_path: Path, stacks: str, expected: list[str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(bin_dir, stacks)
    kms = "awskms://alias/record-staging-pulumi?region=eu-west-1"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STACK": "preview-pr-7"}
    env["PULUMI_SECRETS_PROVIDER"] = kms
    result = _run_step(_step("preview", "destroy", "pulumi destroy"), tmp_path, env)
    assert result.returncode == 0, result.stderr
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()][1:]
    assert [" ".join(c.split()[:2]).removesuffix(" --yes") for c in calls] == expected
    assert all("--stack preview-pr-7" in c for c in calls)
    stack_file = tmp_path / "Pulumi.preview-pr-7.yaml"
    if expected:
        assert stack_file.read_text() == f"secretsprovider: {kms}\n"


def test_a_stack_left_locked_by_a_cancelled_run_is_unlocked_first(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_pulumi(
        bin_dir,
        '[{"name": "preview-pr-9", "updateInProgress": true},'
        ' {"name": "preview-pr-90", "updateInProgress": true}]',
    )
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "Pulumi.preview.yaml").write_text("config: {}\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PR": "9",
        "STACK": "preview-pr-9",
        "PREVIEW_DOMAIN": "p.example.org",
        "PREVIEW_TTL_HOURS": "72",
        "API_IMAGE": "a",
        "MODELS_IMAGE": "m",
        "PULUMI_SECRETS_PROVIDER": "",
        "PREVIEW_SECRET_SEED": "s33d",
    }
    result = _run_step(_step("preview", "deploy", "Select the stack"), tmp_path, env)
    assert result.returncode == 0, result.stderr
    calls = [c.split(" | ")[0] for c in log.read_text().splitlines()]
    cancels = [c for c in calls if c.startswith("cancel")]
    assert cancels == ["cancel --yes --non-interactive --stack preview-pr-9"]
    assert calls.index(cancels[0]) < calls.index("config set --path record:preview.prNumber 9")
