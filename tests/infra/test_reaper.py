"""The reaper's decisions, and what it runs for them, without Pulumi or GitHub: the Pulumi CLI is
a fake that answers from a table and records each command, GitHub an httpx MockTransport."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from infra.reaper import (
    DESTROY_TIMEOUT_SECONDS,
    EXPIRES_TAG,
    INTERRUPT_GRACE_SECONDS,
    PROGRAM_TAG,
    TRUSTED_PROGRAM,
    CommandError,
    GitHubPullRequests,
    Preview,
    PrState,
    decide,
    find_previews,
    list_stacks,
    main,
    parse_expiry,
    preview_pr_number,
    pulumi_runner,
    reap,
    secrets_provider_file,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
FRESH = NOW + timedelta(hours=30)
EXPIRED = NOW - timedelta(minutes=1)


class FakePulumi:
    """``pulumi stack ls --json`` and ``stack tag ls --json`` answered from tables; every
    command recorded; destroy of a stack in ``failing`` exits non-zero."""

    def __init__(
        self,
        stacks: dict[str, dict[str, str]],
        in_progress: Sequence[str] = (),
        failing: Sequence[str] = (),
        locked_at: dict[str, datetime] | None = None,
    ) -> None:
        self.stacks = stacks
        # locked_at: stacks mid-update, with the time their update began (lastUpdate).
        self.locked_at = locked_at or {}
        self.in_progress = set(in_progress) | set(self.locked_at)
        self.failing = set(failing)
        self.commands: list[list[str]] = []
        self.timeouts: dict[str, float | None] = {}

    def __call__(self, args: Sequence[str], timeout: float | None = None) -> str:
        args = list(args)
        self.commands.append(args)
        if args[:3] == ["stack", "ls", "--json"]:
            return json.dumps(
                [
                    {
                        "name": name,
                        "current": False,
                        "updateInProgress": name in self.in_progress,
                        **(
                            {"lastUpdate": self.locked_at[name].isoformat().replace("+00:00", "Z")}
                            if name in self.locked_at
                            else {}
                        ),
                    }
                    for name in self.stacks
                ]
            )
        stack = args[args.index("--stack") + 1]
        if args[:4] == ["stack", "tag", "ls", "--json"]:
            # Main's program made every stack here unless a test says otherwise.
            return json.dumps({PROGRAM_TAG: TRUSTED_PROGRAM, **self.stacks[stack]})
        if args[0] == "destroy":
            self.timeouts[stack] = timeout
            if stack in self.locked_at:
                raise CommandError(f"pulumi destroy --stack {stack}: the stack is locked")
            if stack in self.failing:
                raise CommandError(f"pulumi destroy --stack {stack} exited 255")
        if args[0] == "cancel":
            self.locked_at.pop(stack, None)
        return ""

    def touched(self, stack: str) -> list[list[str]]:
        return [c for c in self.commands if "--stack" in c and c[c.index("--stack") + 1] == stack]

    def destroyed(self) -> list[str]:
        return [c[c.index("--stack") + 1] for c in self.commands if c[0] == "destroy"]

    def removed(self) -> list[str]:
        return [c[c.index("--stack") + 1] for c in self.commands if c[:2] == ["stack", "rm"]]


class FakePulls:
    def __init__(self, states: dict[int, PrState | None]) -> None:
        self.states = states
        self.asked: list[int] = []

    def state(self, number: int) -> PrState | None:
        self.asked.append(number)
        return self.states.get(number)


def tag(when: datetime) -> dict[str, str]:
    return {EXPIRES_TAG: when.isoformat().replace("+00:00", "Z"), "pulumi:project": "record"}


def preview(pr: int, expires_at: datetime | None) -> Preview:
    return Preview(f"preview-pr-{pr}", pr, expires_at)


def test_a_closed_pull_request_is_reaped_whatever_its_ttl() -> None:
    [decision] = decide([preview(7, FRESH)], {7: "closed"}, NOW)
    assert decision.reap
    assert "closed" in decision.reason


def test_an_open_and_fresh_preview_is_kept() -> None:
    [decision] = decide([preview(8, FRESH)], {8: "open"}, NOW)
    assert not decision.reap
    assert not decision.warning


def test_an_open_but_expired_preview_is_reaped() -> None:
    [decision] = decide([preview(9, EXPIRED)], {9: "open"}, NOW)
    assert decision.reap
    assert "expired" in decision.reason


def test_expiry_is_inclusive() -> None:
    [decision] = decide([preview(9, NOW)], {9: "open"}, NOW)
    assert decision.reap


def test_an_open_preview_without_the_tag_is_kept_with_a_warning() -> None:
    [decision] = decide([preview(10, None)], {10: "open"}, NOW)
    assert not decision.reap
    assert decision.warning
    assert EXPIRES_TAG in decision.reason


def test_a_pull_request_github_does_not_know_keeps_its_stack() -> None:
    [decision] = decide([preview(11, EXPIRED)], {11: None}, NOW)
    assert not decision.reap
    assert decision.warning


def test_a_stack_being_updated_is_left_to_its_own_workflow() -> None:
    stack = Preview("preview-pr-12", 12, EXPIRED, update_in_progress=True)
    [decision] = decide([stack], {12: "closed"}, NOW)
    assert not decision.reap


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("preview-pr-12", 12),
        ("acme/preview-pr-12", 12),
        ("organization/record/preview-pr-340", 340),
        ("preview", None),
        ("staging", None),
        ("prod", None),
        ("preview-pr-", None),
        ("preview-pr-0", None),
        ("preview-pr-12-old", None),
        ("my-preview-pr-12", None),
    ],
)
def test_only_preview_pr_stacks_are_previews(name: str, number: int | None) -> None:
    assert preview_pr_number(name) == number


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-07T01:00:00Z", datetime(2026, 12, 7, 1, tzinfo=UTC)),
        ("2026-12-07T02:00:00+01:00", datetime(2026, 12, 7, 1, tzinfo=UTC)),
        ("2026-12-07T01:00:00", None),  # no zone: the runner's would be guessed
        ("next week", None),
        ("", None),
        (None, None),
    ],
)
def test_the_expiry_tag_is_an_instant_with_a_zone(
    value: str | None, expected: datetime | None
) -> None:
    assert parse_expiry(value) == expected


def test_reap_destroys_then_removes_only_what_it_decided() -> None:
    pulumi = FakePulumi(
        {
            "dev": {},
            "staging": {},
            "prod": tag(EXPIRED),  # a base stack, even with the tag, is never touched
            "preview": {},
            "preview-pr-1": tag(FRESH),  # closed
            "preview-pr-2": tag(FRESH),  # open, fresh
            "preview-pr-3": tag(EXPIRED),  # open, expired
            "preview-pr-4": {},  # open, no tag
        }
    )
    pulls = FakePulls({1: "closed", 2: "open", 3: "open", 4: "open"})
    out = io.StringIO()

    assert reap(pulumi, pulls, NOW, out=out) == 0

    assert pulumi.destroyed() == ["preview-pr-1", "preview-pr-3"]
    assert pulumi.removed() == ["preview-pr-1", "preview-pr-3"]
    # destroy before rm, each with --yes
    assert pulumi.touched("preview-pr-1")[1:] == [
        ["destroy", "--yes", "--stack", "preview-pr-1"],
        ["stack", "rm", "--yes", "--stack", "preview-pr-1"],
    ]
    for base in ("dev", "staging", "prod", "preview"):
        assert pulumi.touched(base) == []
    assert sorted(pulls.asked) == [1, 2, 3, 4]
    report = out.getvalue()
    assert "reap preview-pr-1: PR #1 is closed" in report
    assert "keep preview-pr-2" in report
    assert "reap preview-pr-3" in report
    warning = f"warning: keep preview-pr-4: PR #4 is open and the stack has no valid {EXPIRES_TAG}"
    assert warning in report
    assert "destroyed and removed preview-pr-3" in report
    assert "done: 2 to reap, 0 failed, 0 left for the next run, 2 kept" in report


def test_a_dry_run_destroys_nothing_and_says_what_it_would() -> None:
    pulumi = FakePulumi({"preview-pr-5": tag(EXPIRED)})
    out = io.StringIO()

    assert reap(pulumi, FakePulls({5: "open"}), NOW, dry_run=True, out=out) == 0

    assert pulumi.destroyed() == []
    assert pulumi.removed() == []
    assert "would destroy and remove preview-pr-5" in out.getvalue()


def test_a_failed_destroy_keeps_the_stack_goes_on_and_fails_the_run() -> None:
    pulumi = FakePulumi(
        {"preview-pr-6": tag(EXPIRED), "preview-pr-7": tag(EXPIRED)}, failing=["preview-pr-6"]
    )
    out = io.StringIO()

    assert reap(pulumi, FakePulls({6: "closed", 7: "closed"}), NOW, out=out) == 1

    assert pulumi.destroyed() == ["preview-pr-6", "preview-pr-7"]
    assert pulumi.removed() == ["preview-pr-7"]  # never rm a stack that still owns resources
    assert "error: preview-pr-6 not reaped" in out.getvalue()


def test_a_stack_mid_update_is_not_destroyed() -> None:
    pulumi = FakePulumi({"preview-pr-8": tag(EXPIRED)}, in_progress=["preview-pr-8"])

    assert reap(pulumi, FakePulls({8: "closed"}), NOW, out=io.StringIO()) == 0

    assert pulumi.destroyed() == []


def _github(states: dict[int, str]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0ken"
        number = int(request.url.path.rsplit("/", 1)[1])
        assert request.url.path == f"/repos/acme/record/pulls/{number}"
        if number not in states:
            return httpx.Response(404, json={"message": "Not Found"})
        return httpx.Response(200, json={"number": number, "state": states[number]})

    return httpx.Client(
        base_url="https://api.github.test",
        headers={"Authorization": "Bearer t0ken"},
        transport=httpx.MockTransport(handler),
    )


def test_pull_request_states_come_from_the_rest_api() -> None:
    with _github({1: "open", 2: "closed"}) as client:
        pulls = GitHubPullRequests(client, "acme/record")
        assert pulls.state(1) == "open"
        assert pulls.state(2) == "closed"
        assert pulls.state(3) is None


def test_a_github_error_stops_the_run_before_anything_is_destroyed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502)

    pulumi = FakePulumi({"preview-pr-1": tag(EXPIRED)})
    client = httpx.Client(
        base_url="https://api.github.test", transport=httpx.MockTransport(handler)
    )
    with client, pytest.raises(httpx.HTTPStatusError):
        reap(pulumi, GitHubPullRequests(client, "acme/record"), NOW, out=io.StringIO())
    assert pulumi.destroyed() == []


def test_main_wires_the_cli_to_github(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "t0ken")
    pulumi = FakePulumi({"preview-pr-1": tag(FRESH), "preview-pr-2": tag(FRESH)})

    status = main(
        ["--dry-run", "--repository", "acme/record"],
        run=pulumi,
        client_factory=lambda token, url: _github({1: "closed", 2: "open"}),
        now=NOW,
    )

    assert status == 0
    assert pulumi.destroyed() == []
    printed = capsys.readouterr().out
    assert "reap preview-pr-1: PR #1 is closed" in printed
    assert "keep preview-pr-2" in printed


def test_main_refuses_to_run_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert main(["--repository", "acme/record"], run=FakePulumi({})) == 2


KMS = "awskms://alias/record-staging-pulumi?region=eu-west-1"


def test_a_destroy_gets_a_stack_file_naming_the_secrets_provider(tmp_path: Path) -> None:
    stack_file = tmp_path / "Pulumi.preview-pr-3.yaml"
    seen_at_destroy: list[str] = []

    class Recording(FakePulumi):
        def __call__(self, args: Sequence[str], timeout: float | None = None) -> str:
            if args[0] == "destroy":
                seen_at_destroy.append(stack_file.read_text())
            return super().__call__(args, timeout)

    pulumi = Recording({"org/preview-pr-3": tag(EXPIRED), "preview-pr-4": tag(FRESH)})
    (tmp_path / "Pulumi.preview-pr-4.yaml").write_text("config: {}\n")
    prepare = secrets_provider_file(tmp_path, KMS)

    status = reap(
        pulumi, FakePulls({3: "open", 4: "open"}), NOW, out=io.StringIO(), before_destroy=prepare
    )

    assert status == 0
    assert seen_at_destroy == [f"secretsprovider: {KMS}\n"]
    # Only for stacks it destroys, and never over a file that is there.
    assert (tmp_path / "Pulumi.preview-pr-4.yaml").read_text() == "config: {}\n"
    prepare("preview-pr-4")
    assert (tmp_path / "Pulumi.preview-pr-4.yaml").read_text() == "config: {}\n"


def test_main_takes_the_secrets_provider_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_TOKEN", "t0ken")
    monkeypatch.setenv("PULUMI_SECRETS_PROVIDER", KMS)
    pulumi = FakePulumi({"preview-pr-1": tag(FRESH)})

    status = main(
        ["--repository", "acme/record"],
        run=pulumi,
        client_factory=lambda token, url: _github({1: "closed"}),
        now=NOW,
    )

    assert status == 0
    assert pulumi.destroyed() == ["preview-pr-1"]
    assert (tmp_path / "Pulumi.preview-pr-1.yaml").read_text() == f"secretsprovider: {KMS}\n"


def test_without_a_secrets_provider_no_stack_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_TOKEN", "t0ken")
    monkeypatch.setenv("PULUMI_SECRETS_PROVIDER", "")  # Pulumi Cloud: the service's own
    pulumi = FakePulumi({"preview-pr-1": tag(FRESH)})

    main(
        ["--repository", "acme/record"],
        run=pulumi,
        client_factory=lambda token, url: _github({1: "closed"}),
        now=NOW,
    )

    assert pulumi.destroyed() == ["preview-pr-1"]
    assert list(tmp_path.iterdir()) == []


# --- stale locks -----------------------------------------------------------------------------


def test_a_closed_pull_request_s_stale_lock_is_cancelled_then_destroyed() -> None:
    """A run killed mid-update left the lock: kept forever before, now unlocked and reaped."""
    pulumi = FakePulumi(
        {"preview-pr-9": tag(FRESH)}, locked_at={"preview-pr-9": NOW - timedelta(hours=3)}
    )
    out = io.StringIO()

    assert reap(pulumi, FakePulls({9: "closed"}), NOW, out=out) == 0

    assert pulumi.touched("preview-pr-9")[1:] == [
        ["cancel", "--yes", "--stack", "preview-pr-9"],
        ["destroy", "--yes", "--stack", "preview-pr-9"],
        ["stack", "rm", "--yes", "--stack", "preview-pr-9"],
    ]
    assert "its lock is 180 min old" in out.getvalue()


def test_a_young_lock_is_its_workflow_s_and_left_alone() -> None:
    """The close event's own destroy, running now: neither cancelled nor raced."""
    pulumi = FakePulumi(
        {"preview-pr-10": tag(EXPIRED)}, locked_at={"preview-pr-10": NOW - timedelta(minutes=20)}
    )
    out = io.StringIO()

    assert reap(pulumi, FakePulls({10: "closed"}), NOW, out=out) == 0

    assert pulumi.touched("preview-pr-10") == [
        ["stack", "tag", "ls", "--json", "--stack", "preview-pr-10"]
    ]
    assert "an update began 20 min ago" in out.getvalue()


def test_an_open_fresh_preview_s_old_lock_is_not_the_reaper_s() -> None:
    old = Preview("preview-pr-11", 11, FRESH, True, NOW - timedelta(hours=5))
    [decision] = decide([old], {11: "open"}, NOW)
    assert not decision.reap
    assert not decision.unlock


def test_an_expired_preview_s_stale_lock_is_cancelled_too() -> None:
    old = Preview("preview-pr-12", 12, EXPIRED, True, NOW - timedelta(hours=2))
    [decision] = decide([old], {12: "open"}, NOW)
    assert decision.reap
    assert decision.unlock


# --- the run's budget ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_destroys_share_the_budget_and_none_starts_too_late() -> None:
    """Each destroy takes 20 minutes of a 45-minute budget: two run, the second with a timeout
    that leaves Pulumi its grace inside the budget; the third waits for the next run."""
    clock = Clock()
    stacks = {f"preview-pr-{n}": tag(EXPIRED) for n in (21, 22, 23)}

    class Slow(FakePulumi):
        def __call__(self, args: Sequence[str], timeout: float | None = None) -> str:
            if args[0] == "destroy":
                clock.now += 20 * 60
            return super().__call__(args, timeout)

    pulumi = Slow(stacks)
    out = io.StringIO()

    status = reap(
        pulumi,
        FakePulls(dict.fromkeys((21, 22, 23), "closed")),
        NOW,
        out=out,
        budget_seconds=45 * 60,
        clock=clock,
    )

    assert status == 0  # left for the next run is not a failure
    assert pulumi.destroyed() == ["preview-pr-21", "preview-pr-22"]
    assert pulumi.timeouts["preview-pr-21"] == DESTROY_TIMEOUT_SECONDS
    assert pulumi.timeouts["preview-pr-22"] == 25 * 60 - INTERRUPT_GRACE_SECONDS
    report = out.getvalue()
    assert "not started: 5 min of the run's budget left" in report
    assert "1 left for the next run" in report


# --- the real runner, against a fake `pulumi` --------------------------------------------------

FAKE_PULUMI = """#!{python}
import pathlib, signal, sys, time
marks = pathlib.Path({marks!r})
if sys.argv[1] == "stack":
    print("[]")
    sys.exit(0)
def interrupted(signum, frame):
    # What Pulumi does on Ctrl-C: finish what is in flight, save the state, unlock, exit.
    (marks / "saved").write_text("state saved, lock released")
    sys.exit(255)
signal.signal(signal.SIGINT, signal.SIG_IGN if {stubborn} else interrupted)
(marks / "started").write_text(" ".join(sys.argv[1:]))
time.sleep(60)
"""


def fake_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, stubborn: bool) -> Path:
    bin_dir, marks = tmp_path / "bin", tmp_path / "marks"
    bin_dir.mkdir()
    marks.mkdir()
    script = bin_dir / "pulumi"
    script.write_text(
        FAKE_PULUMI.format(python=sys.executable, marks=str(marks), stubborn=stubborn)
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return marks


def test_a_destroy_past_its_timeout_is_interrupted_not_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = fake_pulumi(tmp_path, monkeypatch, stubborn=False)
    run = pulumi_runner(grace_seconds=10)
    assert run(["stack", "ls", "--json"]) == "[]\n"

    started = time.monotonic()
    # (2 s: time for the fake to start and take SIGINT as Pulumi does, on a busy machine.)
    with pytest.raises(CommandError, match="interrupted \\(SIGINT\\) after 2 s; it stopped"):
        run(["destroy", "--yes", "--stack", "preview-pr-1"], timeout=2)

    assert (marks / "started").read_text() == "destroy --yes --stack preview-pr-1 --non-interactive"
    assert (marks / "saved").exists()  # it had the chance to save its state and unlock
    assert time.monotonic() - started < 10


def test_a_pulumi_deaf_to_sigint_is_killed_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = fake_pulumi(tmp_path, monkeypatch, stubborn=True)
    run = pulumi_runner(grace_seconds=0.5)

    started = time.monotonic()
    with pytest.raises(CommandError, match="killed 0 s later: its lock may be left"):
        run(["destroy", "--yes", "--stack", "preview-pr-2"], timeout=2)

    assert (marks / "started").exists()
    assert not (marks / "saved").exists()
    assert time.monotonic() - started < 10


def test_a_stack_a_pull_request_s_program_wrote_is_never_destroyed() -> None:
    """Before previews ran main's program, a pull request's own program wrote its stack's state,
    which may hold commands it chose (a Command's delete, a dynamic provider): a destroy would
    run them with the reaper's credentials. Without the tag main's workflow sets, the reaper
    leaves the stack and says what to do, whatever its PR's state or TTL."""
    old = Preview("preview-pr-3", 3, EXPIRED)
    assert decide([old], {3: "closed"}, NOW)[0].reap
    untrusted = Preview("preview-pr-3", 3, EXPIRED, trusted=False)
    decision = decide([untrusted], {3: "closed"}, NOW)[0]
    assert not decision.reap
    assert decision.warning
    assert "stack rm --force" in decision.reason
    pulumi = FakePulumi(
        {
            "preview-pr-3": {EXPIRES_TAG: EXPIRED.isoformat(), PROGRAM_TAG: "pull-request"},
            "preview-pr-4": {EXPIRES_TAG: EXPIRED.isoformat()},
        }
    )
    previews = {p.stack: p for p in find_previews(pulumi, list_stacks(pulumi))}
    assert not previews["preview-pr-3"].trusted
    assert previews["preview-pr-4"].trusted
