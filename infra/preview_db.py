"""Drops a preview's database when its stack is destroyed, from the deploy machine.

The preview stack's ``<prefix>-database`` resource (``infra/provisioner.py``) is a
``pulumi-command`` local Command; Pulumi runs its commands where ``pulumi`` runs (the deploy
workflow, the reaper, an operator's shell), with the environment the program gave it when the
stack was last updated:

- ``python -m infra.preview_db check`` (its create and update): the drop Job's manifest is one
  this module will run, and ``kubectl`` is on PATH. A preview that could not drop its database
  fails at ``pulumi up``, not silently at ``pulumi destroy``.
- ``python -m infra.preview_db drop`` (its delete): runs the drop Job -- the provisioner Job's
  image, ServiceAccount, hardening and Secret in the base's provisioning namespace (the Job's
  ``metadata.namespace``), with ``--drop`` -- through
  ``kubectl`` against the base cluster, waits for it, prints its logs and deletes it. A Job that
  fails, or does not finish in time, fails the delete, so ``pulumi destroy`` fails and keeps the
  resource in its state: the next destroy runs it again.

Only the master may drop a database, and only the base's provisioner account may read the
master's password: hence a Job in the cluster, not a connection from here. ``kubectl`` rather
than a client library of our own: the workflows install it (pinned to the clusters' minor), and
it brings the cluster's auth plugin.

The drop Job must be in the bootstrap's preview mode (``DB_PREVIEW_NUMBER``) for its own
``record_pr_<n>``: the Job refuses anything else itself, and this refuses it before ``kubectl``
runs, so a wrong Job fails at ``pulumi up`` rather than at the destroy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.kit.roles import PREVIEW_DATABASE, LoginRoles, NotAPreview, require_preview
from infra.db_bootstrap import DROP_FLAG, ENV_DATABASE, ENV_OWNER, ENV_PREVIEW

# The Command's environment (infra/provisioner.py): the drop Job as JSON, and the base cluster's
# kubeconfig (a secret in the stack's state).
ENV_JOB = "RECORD_PREVIEW_DROP_JOB"
ENV_KUBECONFIG = "RECORD_PREVIEW_KUBECONFIG"
# The base stack's name: at the drop, its *current* apiImage replaces the one the preview stored
# at its last `up` (the base's admission policy admits only the image the base runs now, and
# staging deploys on every merge while a preview waits to be closed).
ENV_BASE_STACK = "RECORD_PREVIEW_BASE_STACK"
# `kubectl wait` for Complete in short steps, checking for Failed between them: a failed Job
# never completes, and waiting the whole deadline for it would only delay the error.
WAIT_STEP_SECONDS = 10
# The Job's activeDeadlineSeconds ends it; this much longer lets its pod be scheduled and the
# image be pulled first.
WAIT_MARGIN_SECONDS = 120
LOG_TAIL_LINES = 200

# Pulumi runs a Command in the program's directory or the project's; the commands need the
# project's root (Pulumi.yaml) and its venv (Pulumi.yaml: `virtualenv: .venv`), which has
# infra/ and kubectl's peers, whichever machine runs the destroy.
_FIND_ROOT = (
    'root="$PWD"; while [ ! -f "$root/Pulumi.yaml" ]; do '
    'if [ "$root" = / ]; then echo "preview_db: no Pulumi.yaml above $PWD" >&2; exit 1; fi; '
    'root=$(dirname "$root"); done; cd "$root" && '
)


class DropError(RuntimeError):
    pass


def command_line(action: str) -> str:
    """The shell line a Command runs for ``check`` or ``drop``."""
    return f"{_FIND_ROOT}exec .venv/bin/python -m infra.preview_db {action}"


def drop_job(env: Mapping[str, str]) -> dict[str, Any]:
    """The drop Job from the environment, refused unless it drops a preview's database."""
    try:
        job = json.loads(env[ENV_JOB])
        container = job["spec"]["template"]["spec"]["containers"][0]
        variables = {e["name"]: e.get("value") for e in container["env"]}
        database, owner = variables[ENV_DATABASE], variables[ENV_OWNER]
        number = variables[ENV_PREVIEW]
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DropError(f"{ENV_JOB} does not hold a drop Job: {exc!r}") from exc
    if job.get("kind") != "Job" or container.get("command") != [
        "python",
        "-m",
        "infra.db_bootstrap",
        DROP_FLAG,
    ]:
        raise DropError(f"{ENV_JOB}: {name} is not the database drop Job")
    if not PREVIEW_DATABASE.fullmatch(str(database)) or owner != database:
        raise DropError(f"{ENV_JOB}: {database!r} (owner {owner!r}) is not a preview's database")
    try:
        # The Job itself refuses too (preview mode): this only fails earlier, at `pulumi up`.
        require_preview(LoginRoles(str(owner)), str(database), str(number))
    except (NotAPreview, ValueError) as exc:
        raise DropError(f"{ENV_JOB}: {exc}") from exc
    if not name or not namespace:
        raise DropError(f"{ENV_JOB}: the Job has no name or namespace")
    return dict(job)


class Kubectl:
    """kubectl against the base cluster, with the kubeconfig in a private temporary file."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.namespace = namespace

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["kubectl", "--namespace", self.namespace, *args],  # noqa: S607 - kubectl from PATH
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        if check and result.returncode != 0:
            raise DropError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result


def _failed(kubectl: Kubectl, job: str) -> bool:
    out = kubectl("get", f"job/{job}", "--output", "json").stdout
    conditions = json.loads(out).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Failed" and c.get("status") == "True" for c in conditions)


def _await(kubectl: Kubectl, job: str, timeout: float) -> str:
    """``complete``, ``failed`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        waited = kubectl(
            "wait",
            "--for=condition=complete",
            f"--timeout={WAIT_STEP_SECONDS}s",
            f"job/{job}",
            check=False,
        )
        if waited.returncode == 0:
            return "complete"
        if _failed(kubectl, job):
            return "failed"
        if time.monotonic() >= deadline:
            return "timeout"


def run_drop(job: dict[str, Any], kubectl: Kubectl) -> str:
    """Applies the drop Job, waits for it, prints its logs and deletes it; its outcome."""
    name = job["metadata"]["name"]
    # A Job's template cannot change: one left by a failed destroy goes first.
    kubectl("delete", f"job/{name}", "--ignore-not-found", "--wait=true")
    kubectl("apply", "--filename", "-", stdin=json.dumps(job))
    timeout = int(job["spec"].get("activeDeadlineSeconds", 600)) + WAIT_MARGIN_SECONDS
    try:
        outcome = _await(kubectl, name, timeout)
        logs = kubectl(
            "logs", f"job/{name}", "--all-containers", f"--tail={LOG_TAIL_LINES}", check=False
        )
        stream = sys.stdout if outcome == "complete" else sys.stderr
        print(logs.stdout + logs.stderr, end="", file=stream)
    finally:
        # Its pods go with it (kubectl deletes in the background by default).
        kubectl("delete", f"job/{name}", "--ignore-not-found", check=False)
    return outcome


def current_base_image(env: Mapping[str, str]) -> str | None:
    """The base stack's apiImage now (``pulumi stack output``), or None when it cannot be read
    (no base named, no pulumi on PATH, no access): the stored image is tried then."""
    base = env.get(ENV_BASE_STACK)
    pulumi = shutil.which("pulumi")
    if not base or pulumi is None:
        return None
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [pulumi, "stack", "output", "apiImage", "--stack", base, "--non-interactive"],
        capture_output=True,
        text=True,
        check=False,
    )
    image = result.stdout.strip()
    if result.returncode != 0 or "@sha256:" not in image:
        print(f"preview_db: cannot read {base}'s apiImage; using the stored one", file=sys.stderr)
        return None
    return image


def with_image(job: dict[str, Any], image: str | None) -> dict[str, Any]:
    if image is None:
        return job
    container = job["spec"]["template"]["spec"]["containers"][0]
    if container["image"] != image:
        print(f"preview_db: the base now runs {image}; the drop Job runs it too", flush=True)
        container["image"] = image
    return job


def drop(env: Mapping[str, str]) -> int:
    job = with_image(drop_job(env), current_base_image(env))
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    with tempfile.TemporaryDirectory(prefix="record-preview-db-") as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.touch(mode=0o600)
        kubeconfig.write_text(env[ENV_KUBECONFIG])
        outcome = run_drop(job, Kubectl(kubeconfig, namespace))
    if outcome != "complete":
        print(
            f"preview_db: Job {namespace}/{name} {outcome}: database not dropped", file=sys.stderr
        )
        return 1
    print(f"preview_db: Job {namespace}/{name} complete", flush=True)
    return 0


def check(env: Mapping[str, str]) -> int:
    job = drop_job(env)
    if ENV_KUBECONFIG not in env:
        raise DropError(f"{ENV_KUBECONFIG} is not set")
    if shutil.which("kubectl") is None:
        raise DropError(
            "kubectl is not on PATH: destroying this preview could not drop its database"
        )
    print(f"preview_db: {job['metadata']['name']} will drop the database on destroy", flush=True)
    return 0


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    actions = {"check": check, "drop": drop}
    if len(argv) != 1 or argv[0] not in actions:
        print("usage: python -m infra.preview_db {check|drop}", file=sys.stderr)
        return 2
    try:
        return actions[argv[0]](env)
    except DropError as exc:
        print(f"preview_db: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
