"""preview.yml's comments (infra/pr_comment.py) against a fake GitHub API: one per marker,
found again past the first page, edited rather than posted twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from infra import pr_comment

MARKER = "<!-- record-preview:plan -->"


class FakeGitHub:
    def __init__(self) -> None:
        self.comments: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.auth: set[str] = set()

    def add(self, login: str, body: str) -> None:
        self.comments.append({"id": len(self.comments) + 1, "user": {"login": login}, "body": body})


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            return dict(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def do_GET(self) -> None:
            url = urlparse(self.path)
            fake.calls.append(("GET", self.path))
            fake.auth.add(self.headers["Authorization"])
            query = parse_qs(url.query)
            size, page = int(query["per_page"][0]), int(query["page"][0])
            self._reply(fake.comments[(page - 1) * size : page * size])

        def do_PATCH(self) -> None:
            fake.calls.append(("PATCH", self.path))
            number = int(self.path.rsplit("/", 1)[1])
            fake.comments[number - 1]["body"] = self._body()["body"]
            self._reply({})

        def do_POST(self) -> None:
            fake.calls.append(("POST", self.path))
            fake.add(pr_comment.BOT, self._body()["body"])
            self._reply({})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(api: str, tmp_path: Path, text: str) -> int:
    body = tmp_path / "body.md"
    body.write_text(text)
    env = {
        "GITHUB_API_URL": api,
        "GH_TOKEN": "t0ken",
        "GITHUB_REPOSITORY": "acme/record",
        "PR": "7",
    }
    return pr_comment.main(["--marker", MARKER, "--body-file", str(body)], env)


def test_posted_once_then_edited_even_past_the_first_page(
    github: tuple[FakeGitHub, str], tmp_path: Path
) -> None:
    fake, api = github
    # A person quoting the marker is not the bot's comment.
    fake.add("someone", f"{MARKER} quoted")
    for index in range(pr_comment.PER_PAGE + 5):
        fake.add("someone", f"comment {index}")
    assert run(api, tmp_path, "first plan") == 0
    assert fake.calls[-1] == ("POST", "/repos/acme/record/issues/7/comments")
    fake.calls.clear()

    assert run(api, tmp_path, "second plan") == 0

    assert [method for method, _ in fake.calls] == ["GET", "GET", "PATCH"]
    bots = [c for c in fake.comments if c["user"]["login"] == pr_comment.BOT]
    assert [c["body"] for c in bots] == [f"{MARKER}\nsecond plan"]
    assert fake.auth == {"Bearer t0ken"}


def test_a_long_body_is_cut_to_what_github_takes(
    github: tuple[FakeGitHub, str], tmp_path: Path
) -> None:
    fake, api = github
    assert run(api, tmp_path, "x" * 100_000) == 0
    assert len(fake.comments[0]["body"]) == pr_comment.MAX_BODY
