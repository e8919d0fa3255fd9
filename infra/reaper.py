"""The preview reaper: destroys pull-request previews nobody will look at again.

``.github/workflows/reaper.yml`` runs ``python -m infra.reaper`` every hour. A preview stack
(``preview-pr-<n>``) is destroyed and removed when its pull request is closed (merged or not:
the close event's own destroy may have failed or never run) or when its ``record:expires-at``
stack tag has passed; ``preview.yml`` moves that tag to 72 hours after each push. Everything
else is kept: base stacks are never looked at, and a preview whose state cannot be told (no
tag, a pull request GitHub does not know, an update in progress) is kept with a warning, since
a wrong keep costs a day of pods and a wrong destroy costs someone's review environment.

A lock outlives the run that took it when that run was killed (a cancelled workflow, a runner
lost). A preview the reaper would destroy but finds locked is unlocked (`pulumi cancel`) and
destroyed once its lock is older than ``STALE_LOCK_SECONDS``, longer than any workflow that
updates a preview may run: no live run holds it then. A younger lock, or one whose age
cannot be read, is still its workflow's.

The reaper runs inside the workflow job's timeout, so it keeps its own budget: a destroy that
outlives its share gets SIGINT (Pulumi then stops cleanly, saves the state it has, and
releases the lock; a killed Pulumi leaves a stale lock and an unsaved state on an S3 backend),
then a grace period, and only then SIGKILL; and no destroy starts with less than
``MIN_DESTROY_SECONDS`` of the budget left: the next hourly run takes it.

The decision is ``decide`` (stacks and pull-request states in, actions out); ``reap`` wires it
to the Pulumi CLI and the GitHub API, both injectable, and prints what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol, TextIO

import httpx

# The stack tag preview.yml sets: an ISO 8601 UTC instant, e.g. 2026-12-07T01:00:00Z.
EXPIRES_TAG = "record:expires-at"
# Set by the preview workflow when main's program creates a preview stack. A stack without it
# was last written by a pull request's own program (before previews ran main's): its state may
# hold commands that pull request chose, which a destroy would run with our credentials. Such a
# stack is never destroyed here: `pulumi stack rm --force` it by hand (DEPLOYMENT.md).
PROGRAM_TAG = "record:program"
TRUSTED_PROGRAM = "main"
# `pulumi stack ls` prints names as the backend qualifies them: preview-pr-12, org/preview-pr-12
# or organization/record/preview-pr-12; the last segment is the stack's own name.
PREVIEW_STACK = re.compile(r"(?:^|/)preview-pr-(?P<pr>[1-9][0-9]*)$")
# A destroy waits on Kubernetes finalizers and the RDS database drop; no single one should
# hold the hourly run past the next.
DESTROY_TIMEOUT_SECONDS = 40 * 60
# What Pulumi gets after SIGINT to finish the operations in flight and save its state.
INTERRUPT_GRACE_SECONDS = 120
# The reaper's whole run: reaper.yml's job has 55 minutes, setup (checkout, venv, Pulumi
# CLI, credentials) takes a few of them.
DEFAULT_BUDGET_SECONDS = 45 * 60
# A destroy is not started with less than this left (a preview's takes 5-15 minutes).
MIN_DESTROY_SECONDS = 10 * 60
# preview.yml's and deploy.yml's jobs stop after 60 minutes (timeout-minutes): a lock older
# than that, with a margin, belongs to a run that no longer exists.
STALE_LOCK_SECONDS = 90 * 60

PrState = Literal["open", "closed"]


class CommandError(RuntimeError):
    """A Pulumi CLI command exited non-zero."""


class Runner(Protocol):
    def __call__(self, args: Sequence[str], timeout: float | None = None) -> str:
        """Runs ``pulumi <args>`` and returns its stdout; raises CommandError on failure."""
        ...


class PullRequests(Protocol):
    def state(self, number: int) -> PrState | None:
        """The pull request's state, or None when the repository has no such pull request."""
        ...


@dataclass(frozen=True)
class Stack:
    # As `pulumi stack ls` printed it: what `--stack` takes back.
    name: str
    update_in_progress: bool = False
    # `pulumi stack ls`'s lastUpdate: with an update in progress, when that update started.
    last_update: datetime | None = None


@dataclass(frozen=True)
class Preview:
    stack: str
    pr_number: int
    # None: the tag is missing or unreadable.
    expires_at: datetime | None
    update_in_progress: bool = False
    # When the update in progress started (None: unknown).
    locked_since: datetime | None = None
    # Written by main's program (PROGRAM_TAG): only such a stack is destroyed here.
    trusted: bool = True


@dataclass(frozen=True)
class Decision:
    stack: str
    reap: bool
    reason: str
    # Something a person should look at (a preview the reaper cannot judge).
    warning: bool = False
    # Its lock is stale: `pulumi cancel` before the destroy.
    unlock: bool = False


def preview_pr_number(stack_name: str) -> int | None:
    """The pull request a preview stack belongs to; None for every other stack."""
    match = PREVIEW_STACK.search(stack_name)
    return int(match["pr"]) if match else None


def parse_expiry(value: str | None) -> datetime | None:
    """The tag's instant (timezone-aware), or None when it is absent or not ISO 8601 with a
    zone: a naive time would be read in the runner's zone."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def decide(
    previews: Sequence[Preview], states: Mapping[int, PrState | None], now: datetime
) -> list[Decision]:
    """One decision per preview: reap when its pull request is closed or its TTL has passed."""
    decisions = []
    for preview in previews:
        decisions.append(_decide_one(preview, states.get(preview.pr_number), now))
    return decisions


def _decide_one(preview: Preview, state: PrState | None, now: datetime) -> Decision:
    if not preview.trusted:
        return Decision(
            preview.stack,
            False,
            f"no {PROGRAM_TAG}={TRUSTED_PROGRAM} tag: its state was written by a pull request's "
            "own program; never destroyed from here (pulumi stack rm --force, DEPLOYMENT.md)",
            warning=True,
        )
    decision = _decide_unlocked(preview, state, now)
    if not preview.update_in_progress:
        return decision
    pr = f"#{preview.pr_number}"
    if not decision.reap:
        # Its own workflow is deploying it; the next run judges it again.
        return Decision(preview.stack, False, f"an update is in progress (PR {pr})")
    if preview.locked_since is None:
        return Decision(
            preview.stack,
            False,
            f"{decision.reason}, but an update of unknown age is in progress",
            warning=True,
        )
    age = now - preview.locked_since
    minutes = int(age.total_seconds() // 60)
    if age.total_seconds() < STALE_LOCK_SECONDS:
        # A closing pull request's own destroy, most likely: not ours to interrupt.
        return Decision(
            preview.stack, False, f"{decision.reason}, but an update began {minutes} min ago"
        )
    return Decision(
        preview.stack,
        True,
        f"{decision.reason}; its lock is {minutes} min old, a run that no longer exists",
        warning=True,
        unlock=True,
    )


def _decide_unlocked(preview: Preview, state: PrState | None, now: datetime) -> Decision:
    pr = f"#{preview.pr_number}"
    if state == "closed":
        return Decision(preview.stack, True, f"PR {pr} is closed")
    if state is None:
        return Decision(
            preview.stack, False, f"GitHub has no PR {pr} in this repository", warning=True
        )
    if preview.expires_at is None:
        return Decision(
            preview.stack,
            False,
            f"PR {pr} is open and the stack has no valid {EXPIRES_TAG} tag",
            warning=True,
        )
    expiry = preview.expires_at.astimezone(UTC).isoformat(timespec="seconds")
    if preview.expires_at <= now:
        return Decision(preview.stack, True, f"PR {pr} is open but expired at {expiry}")
    return Decision(preview.stack, False, f"PR {pr} is open, expires at {expiry}")


def list_stacks(run: Runner) -> list[Stack]:
    """The current project's stacks (``pulumi stack ls --json``: name, current, lastUpdate,
    updateInProgress, resourceCount, url; no tags)."""
    rows = json.loads(run(["stack", "ls", "--json"]))
    return [
        Stack(
            str(row["name"]),
            bool(row.get("updateInProgress", False)),
            parse_expiry(str(row.get("lastUpdate") or "")),
        )
        for row in rows
    ]


def read_tags(run: Runner, stack: str) -> dict[str, str]:
    """``pulumi stack tag ls --json`` prints the tags as one JSON object, name to value."""
    tags = json.loads(run(["stack", "tag", "ls", "--json", "--stack", stack]))
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def find_previews(run: Runner, stacks: Sequence[Stack]) -> list[Preview]:
    """Only preview stacks; their tags are the only thing read from them."""
    previews = []
    for stack in stacks:
        number = preview_pr_number(stack.name)
        if number is None:
            continue
        tags = read_tags(run, stack.name)
        previews.append(
            Preview(
                stack.name,
                number,
                parse_expiry(tags.get(EXPIRES_TAG)),
                stack.update_in_progress,
                stack.last_update if stack.update_in_progress else None,
                trusted=tags.get(PROGRAM_TAG) == TRUSTED_PROGRAM,
            )
        )
    return previews


def destroy(
    run: Runner, stack: str, timeout: float = DESTROY_TIMEOUT_SECONDS, *, unlock: bool = False
) -> None:
    """``pulumi destroy`` then ``pulumi stack rm``: a stack whose resources could not all be
    deleted keeps its state, so the next run (or a person) can finish the job. ``unlock``
    first cancels the stale update that holds its lock."""
    if unlock:
        run(["cancel", "--yes", "--stack", stack])
    run(["destroy", "--yes", "--stack", stack], timeout=timeout)
    run(["stack", "rm", "--yes", "--stack", stack])


def secrets_provider_file(directory: Path, secrets_provider: str) -> Callable[[str], None]:
    """Writes ``Pulumi.<stack>.yaml`` naming the secrets provider, where there is none.

    preview.yml writes a preview's stack file on the runner that deploys it; this checkout has
    none, and without one a self-managed backend falls back to a passphrase to encrypt the
    state that `pulumi destroy` saves."""

    def prepare(stack: str) -> None:
        path = directory / f"Pulumi.{stack.rsplit('/', 1)[-1]}.yaml"
        if not path.exists():
            path.write_text(f"secretsprovider: {secrets_provider}\n")

    return prepare


def reap(
    run: Runner,
    pulls: PullRequests,
    now: datetime,
    *,
    dry_run: bool = False,
    out: TextIO | None = None,
    before_destroy: Callable[[str], None] | None = None,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Decides, destroys (unless ``dry_run``), prints each step (to stdout by default);
    returns the exit status: 1 when a destroy failed, else 0. Destroys share
    ``budget_seconds`` (from this call, by ``clock``); those left for lack of it are the next
    run's, and not failures."""
    out = out or sys.stdout
    deadline = clock() + budget_seconds
    previews = find_previews(run, list_stacks(run))
    states = {p.pr_number: pulls.state(p.pr_number) for p in previews}
    decisions = decide(previews, states, now)
    print(f"{len(previews)} preview stack(s) at {now.isoformat(timespec='seconds')}", file=out)
    failed = deferred = 0
    for decision in decisions:
        verb = "reap" if decision.reap else "keep"
        prefix = "warning: " if decision.warning else ""
        print(f"{prefix}{verb} {decision.stack}: {decision.reason}", file=out)
        if not decision.reap:
            continue
        if dry_run:
            print(f"  dry run: would destroy and remove {decision.stack}", file=out)
            continue
        left = deadline - clock()
        if left < MIN_DESTROY_SECONDS:
            deferred += 1
            print(
                f"  not started: {int(left // 60)} min of the run's budget left; the next run "
                "destroys it",
                file=out,
            )
            continue
        # Its share ends early enough for Pulumi's grace after SIGINT to fit in the budget.
        timeout = min(DESTROY_TIMEOUT_SECONDS, left - INTERRUPT_GRACE_SECONDS)
        try:
            if before_destroy is not None:
                before_destroy(decision.stack)
            if decision.unlock:
                print(f"  cancelling the stale update that locks {decision.stack}", file=out)
            destroy(run, decision.stack, timeout, unlock=decision.unlock)
        except (CommandError, OSError) as error:
            failed += 1
            print(f"  error: {decision.stack} not reaped: {error}", file=out)
            continue
        print(f"  destroyed and removed {decision.stack}", file=out)
    reaped = sum(d.reap for d in decisions)
    print(
        f"done: {reaped} to reap, {failed} failed, {deferred} left for the next run, "
        f"{len(decisions) - reaped} kept",
        file=out,
    )
    return 1 if failed else 0


def pulumi_runner(cwd: str | None = None, grace_seconds: float = INTERRUPT_GRACE_SECONDS) -> Runner:
    """Runs the Pulumi CLI; its progress (destroy's) streams to stderr, the job log. Past its
    timeout a command gets SIGINT, as Ctrl-C would send: Pulumi finishes what is in flight,
    saves its state and releases the stack's lock. Only if it is still running
    ``grace_seconds`` later is it killed."""

    def run(args: Sequence[str], timeout: float | None = None) -> str:
        command = ["pulumi", *args, "--non-interactive"]
        try:
            # A fixed program, arguments from our own list.
            process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True)  # noqa: S603
        except OSError as error:
            raise CommandError(f"{' '.join(command)}: {error}") from error
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=grace_seconds)
                ending = f"interrupted (SIGINT) after {timeout:.0f} s; it stopped"
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                ending = (
                    f"interrupted (SIGINT) after {timeout:.0f} s and killed {grace_seconds:.0f} "
                    "s later: its lock may be left (`pulumi cancel`)"
                )
            raise CommandError(f"{' '.join(command)}: {ending}") from None
        if process.returncode != 0:
            raise CommandError(f"{' '.join(command)} exited {process.returncode}")
        return stdout

    return run


class GitHubPullRequests:
    """Pull-request states from the REST API (``GET /repos/{repo}/pulls/{n}``)."""

    def __init__(self, client: httpx.Client, repository: str) -> None:
        self._client = client
        self._repository = repository

    def state(self, number: int) -> PrState | None:
        response = self._client.get(f"/repos/{self._repository}/pulls/{number}")
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        response.raise_for_status()
        state = response.json().get("state")
        if state not in ("open", "closed"):
            raise ValueError(f"PR #{number}: unexpected state {state!r}")
        return "open" if state == "open" else "closed"


def github_client(token: str, api_url: str = "https://api.github.com") -> httpx.Client:
    return httpx.Client(
        base_url=api_url,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        },
        timeout=30.0,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.reaper",
        description=(
            "Destroy preview-pr-<n> stacks whose pull request is closed or whose "
            f"{EXPIRES_TAG} stack tag has passed; print what was done."
        ),
    )
    parser.add_argument("--dry-run", action="store_true", help="decide and print, destroy nothing")
    parser.add_argument(
        "--repository",
        default=os.environ.get("GITHUB_REPOSITORY"),
        help="owner/name of the pull requests (default: $GITHUB_REPOSITORY)",
    )
    parser.add_argument(
        "--secrets-provider",
        default=os.environ.get("PULUMI_SECRETS_PROVIDER") or None,
        help=(
            "the previews' secrets provider (awskms://...), written into a missing stack file "
            "before a destroy (default: $PULUMI_SECRETS_PROVIDER; unset for Pulumi Cloud)"
        ),
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=DEFAULT_BUDGET_SECONDS / 60,
        help=(
            "minutes the run may spend; no destroy starts with less than "
            f"{MIN_DESTROY_SECONDS // 60} left (default: {DEFAULT_BUDGET_SECONDS // 60})"
        ),
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        help="GitHub REST API root (default: $GITHUB_API_URL or api.github.com)",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    *,
    run: Runner | None = None,
    client_factory: Callable[[str, str], httpx.Client] = github_client,
    now: datetime | None = None,
) -> int:
    args = _parse_args(argv)
    token = os.environ.get("GITHUB_TOKEN")
    if not args.repository or not token:
        print("error: set GITHUB_TOKEN and --repository (or GITHUB_REPOSITORY)", file=sys.stderr)
        return 2
    with client_factory(token, args.api_url) as client:
        return reap(
            run or pulumi_runner(),
            GitHubPullRequests(client, args.repository),
            now or datetime.now(UTC),
            dry_run=args.dry_run,
            before_destroy=(
                secrets_provider_file(Path.cwd(), args.secrets_provider)
                if args.secrets_provider
                else None
            ),
            budget_seconds=args.budget_minutes * 60,
        )


if __name__ == "__main__":
    sys.exit(main())
