"""One pull-request comment per marker, edited on each run, posted by preview.yml.

The preview jobs run on the in-VPC CodeBuild runner (aws/codebuild/standard:7.0), which has
no ``gh``; this needs only Python's standard library and the job's ``GH_TOKEN``. A comment is
found again by the marker its body starts with, among the bot's comments on every page.

``python -m infra.pr_comment --marker '<!-- record-preview:plan -->' --body-file F``, with
``GH_TOKEN``, ``GITHUB_REPOSITORY``, ``PR`` and ``GITHUB_API_URL`` from the job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

BOT = "github-actions[bot]"
PER_PAGE = 100
# GitHub refuses a comment body over 65,536 characters.
MAX_BODY = 65_000


class GitHub:
    def __init__(self, api: str, token: str) -> None:
        self.api = api.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(  # noqa: S310 - the Actions API URL, https
            f"{self.api}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"null")


def find(github: GitHub, repo: str, pr: int, marker: str) -> int | None:
    """The id of the bot's comment starting with ``marker``, on whichever page it is."""
    page = 1
    while True:
        comments = github.call(
            "GET", f"/repos/{repo}/issues/{pr}/comments?per_page={PER_PAGE}&page={page}"
        )
        for comment in comments:
            if comment["user"]["login"] == BOT and comment["body"].startswith(marker):
                return int(comment["id"])
        if len(comments) < PER_PAGE:
            return None
        page += 1


def upsert(github: GitHub, repo: str, pr: int, marker: str, text: str) -> str:
    """Edit the marker's comment to ``marker`` + ``text``, or post it; which one it did."""
    body = f"{marker}\n{text}"[:MAX_BODY]
    found = find(github, repo, pr, marker)
    if found is not None:
        github.call("PATCH", f"/repos/{repo}/issues/comments/{found}", {"body": body})
        return "edited"
    github.call("POST", f"/repos/{repo}/issues/{pr}/comments", {"body": body})
    return "posted"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m infra.pr_comment", description=__doc__)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--body-file", required=True)
    args = parser.parse_args(argv)
    with open(args.body_file, encoding="utf-8") as file:
        text = file.read()
    github = GitHub(env.get("GITHUB_API_URL", "https://api.github.com"), env["GH_TOKEN"])
    done = upsert(github, env["GITHUB_REPOSITORY"], int(env["PR"]), args.marker, text)
    print(f"pr_comment: {done} the {args.marker} comment")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
