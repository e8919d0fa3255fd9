"""The reaper's decisions, and what it runs for them, without Pulumi or GitHub: the Pulumi CLI is
a fake that answers from a table and records each command, GitHub an httpx MockTransport."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from infra.reaper import (
    EXPIRES_TAG,
    CommandError,
    GitHubPullRequests,
    Preview,
    PrState,
    decide,
    main,
    parse_expiry,
    preview_pr_number,
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
    ) -> None:
        self.stacks = stacks
        self.in_progress = set(in_progress)
        self.failing = set(failing)
        self.commands: list[list[str]] = []

    def __call__(self, args: Sequence[str], timeout: float | None = None) -> str:
        args = list(args)
        self.commands.append(args)
        if args[:3] == ["stack", "ls", "--json"]:
            return json.dumps(
                [
                    {"name": name, "current": False, "updateInProgress": name in self.in_progress}
                    for name in self.stacks
                ]
            )
        stack = args[args.index("--stack") + 1]
        if args[:4] == ["stack", "tag", "ls", "--json"]:
            return json.dumps(self.stacks[stack])
        if args[0] == "destroy" and stack in self.failing:
            raise CommandError(f"pulumi destroy --stack {stack} exited 255")
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
    assert "done: 2 to reap, 0 failed, 2 kept" in report


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
