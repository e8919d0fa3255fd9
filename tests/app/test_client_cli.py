"""`record upload` and `record recordings list` against a real API server on loopback.

The server is uvicorn in a thread serving ``create_app`` with the test settings (real
PostgreSQL and Valkey). No worker runs here: where a test follows processing, a stand-in moves
the recording through the pipeline's states in the database, as the worker would.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from app.cli import app as cli
from app.client_cli import Api, ApiConfig, _upload_one
from app.devstack.supervisor import write_env_file
from tests.app.conftest import PASSWORD
from tests.app.recordings.test_upload import wav_bytes
from tests.conftest import free_port

_emails = itertools.count()


@dataclass
class LiveApi:
    url: str

    def tenant_key(self, name: str) -> tuple[str, str]:
        """A new org made through the API: (org id, owner API key)."""
        with httpx.Client(base_url=self.url) as http:
            signup = http.post(
                "/api/auth/signup",
                json={
                    "email": f"cli{next(_emails)}-{time.time_ns()}@example.com",
                    "password": PASSWORD,
                    "name": name,
                    "org_name": name,
                },
            )
            assert signup.status_code == 201, signup.text
            org_id = signup.json()["org"]["id"]
            key = http.post(
                f"/api/orgs/{org_id}/api-keys",
                json={"name": "cli", "role": "owner"},
                headers={
                    "Authorization": f"Bearer {signup.json()['session_token']}",
                    "X-Record-Org": org_id,
                },
            )
            assert key.status_code == 201, key.text
            return org_id, key.json()["key"]


@contextmanager
def serving(app: Any) -> Iterator[LiveApi]:
    """``app`` under uvicorn in a thread on a free loopback port, until the block ends."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        # The app configures logging; uvicorn's dictConfig or log levels would rewire the
        # process's loggers for every later test.
        log_config=None,
        log_level=None,
        access_log=False,
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveApi(url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def live_api(settings: Any) -> Iterator[LiveApi]:
    from app.main import create_app

    with serving(create_app(settings.model_copy(update={"ratelimit_upload": "1000/60"}))) as api:
        yield api


def run(*args: str, url: str | None, key: str | None, state_dir: Path) -> Any:
    env = {"RECORD_API_URL": url, "RECORD_API_KEY": key, "STATE_DIR": str(state_dir)}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def recording_file(tmp_path: Path, name: str, content: bytes | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(wav_bytes(0.3) if content is None else content)
    return path


def test_an_upload_streams_the_file_with_its_length(tmp_path: Path) -> None:
    """httpx's multipart body, read through rich's progress reader: a Content-Length (not
    chunked, so the server can refuse an oversized file before reading it), the title field,
    the name quoted as browsers quote it, every byte once and the bar at the full size."""
    import httpx
    from rich.console import Console

    path = recording_file(tmp_path, 'say "hi"\nnow.wav', b"x" * (2 * 1024 * 1024 + 5))
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["headers"] = request.headers
        seen["body"] = request.read()
        return httpx.Response(202, json={"recording": {"id": "r"}})

    api = Api(ApiConfig("http://record.test", "rk_test"))
    api.http = httpx.Client(base_url="http://record.test", transport=httpx.MockTransport(handler))
    console = Console(record=True, width=120)
    assert _upload_one(api, path, "Title", console) == {"recording": {"id": "r"}}
    headers, body = seen["headers"], seen["body"]
    assert "transfer-encoding" not in headers
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="title"\r\n\r\nTitle\r\n' in body
    assert b'filename="say %22hi%22%0Anow.wav"' in body
    assert body.count(b"x" * 1024) == 2 * 1024
    assert "2.1/2.1 MB" in console.export_text()  # the bar reached the file's size


def test_upload_lists_and_keeps_orgs_apart(live_api: LiveApi, settings: Any, tmp_path: Path):
    org_a, key_a = live_api.tenant_key("CLI A")
    _org_b, key_b = live_api.tenant_key("CLI B")
    first = recording_file(tmp_path, "first.wav")
    second = recording_file(tmp_path, "Design review.wav")

    result = run("upload", str(first), "--title", "Kick-off", url=live_api.url, key=key_a,
                 state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "first.wav: recording " in result.output
    result = run("upload", str(second), url=live_api.url, key=key_a, state_dir=tmp_path)
    assert result.exit_code == 0, result.output

    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT title, size_bytes, media_key FROM recordings ORDER BY created_at"
        ).fetchall()
    assert [(title, size) for title, size, _ in rows] == [
        ("Kick-off", first.stat().st_size),
        ("Design review", second.stat().st_size),
    ]
    stored = settings.state_dir / "objects" / rows[0][2]
    assert stored.read_bytes() == first.read_bytes(), "the bytes arrived intact"
    assert rows[0][2].startswith(f"org/{org_a}/")

    # Cursor pagination: pages of one, two rows wanted, newest first.
    result = run("recordings", "list", "--limit", "2", "--page-size", "1", url=live_api.url,
                 key=key_a, state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.index("Design review") < result.output.index("Kick-off")
    assert result.output.count("uploaded") == 2
    result = run("recordings", "list", "--limit", "1", url=live_api.url, key=key_a,
                 state_dir=tmp_path)  # fmt: skip
    assert "Design review" in result.output
    assert "Kick-off" not in result.output
    assert "more:" in result.output
    result = run("recordings", "list", "--status", "ready", url=live_api.url, key=key_a,
                 state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 0
    assert "No ready recordings." in result.output

    result = run("recordings", "list", url=live_api.url, key=key_b, state_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "No recordings." in result.output


def _advance_pipeline(database_url: str, stop: threading.Event) -> None:
    """Stand in for the worker: uploaded -> transcribing -> embedding -> ready, one step per
    pass; a recording whose title says 'broken' fails at transcription."""
    next_status = {"uploaded": "transcribing", "transcribing": "embedding", "embedding": "ready"}
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not stop.is_set():
            for rec_id, status, title, job_id in conn.execute(
                "SELECT id, status, title, job_id FROM recordings WHERE status <> ALL(%s)",
                (["ready", "failed"],),
            ).fetchall():
                if "broken" in title and status == "transcribing":
                    conn.execute(
                        "UPDATE recordings SET status = 'failed', "
                        "error = 'transcription failed: no audio stream' WHERE id = %s",
                        (rec_id,),
                    )
                    conn.execute(
                        "UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", (job_id,)
                    )
                    continue
                conn.execute(
                    "UPDATE recordings SET status = %s WHERE id = %s",
                    (next_status[status], rec_id),
                )
            stop.wait(0.15)


@pytest.fixture
def pipeline(settings: Any) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=_advance_pipeline, args=(settings.database_url, stop))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_upload_wait_follows_the_pipeline(
    live_api: LiveApi, pipeline: None, settings: Any, tmp_path: Path
):
    _org, key = live_api.tenant_key("CLI wait")
    good = recording_file(tmp_path, "good.wav")
    broken = recording_file(tmp_path, "broken.wav")

    result = run("upload", str(good), "--wait", "--poll-interval", "0.1", url=live_api.url,
                 key=key, state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ready" in result.output

    result = run("upload", str(good), str(broken), "--wait", "--poll-interval", "0.1",
                 url=live_api.url, key=key, state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "broken" in result.output
    assert "failed: transcription failed: no audio stream" in result.output
    with psycopg.connect(settings.database_url) as conn:
        statuses = conn.execute("SELECT status FROM recordings ORDER BY status").fetchall()
    assert statuses == [("failed",), ("ready",), ("ready",)]


def test_configuration_from_dev_env_and_clear_errors(live_api: LiveApi, tmp_path: Path):
    _org, key = live_api.tenant_key("CLI config")
    state = tmp_path / "state"
    state.mkdir()

    result = run("recordings", "list", url=None, key=None, state_dir=state)
    assert result.exit_code == 1
    assert "no API key: run `make up`" in result.output
    assert "RECORD_API_KEY" in result.output

    # What `make up` writes is enough on its own.
    write_env_file(state / "dev.env", {"RECORD_API_URL": live_api.url, "RECORD_API_KEY": key})
    result = run("recordings", "list", url=None, key=None, state_dir=state)
    assert result.exit_code == 0, result.output
    assert "No recordings." in result.output

    result = run("recordings", "list", url=live_api.url, key="rk_not_a_real_key", state_dir=state)
    assert result.exit_code == 1
    assert "refused the API key" in result.output

    unreachable = f"http://127.0.0.1:{free_port()}"
    result = run("recordings", "list", url=unreachable, key=key, state_dir=state)
    assert result.exit_code == 1
    assert f"cannot reach {unreachable}" in result.output
    assert "make up" in result.output

    result = run("recordings", "list", "--status", "done", url=live_api.url, key=key,
                 state_dir=state)  # fmt: skip
    assert result.exit_code == 1
    assert "--status must be one of" in result.output


def test_refused_uploads_say_why_and_store_nothing(
    live_api: LiveApi, settings: Any, tmp_path: Path
):
    _org, key = live_api.tenant_key("CLI refused")
    notes = recording_file(tmp_path, "notes.txt", b"hello")
    result = run("upload", str(notes), url=live_api.url, key=key, state_dir=tmp_path)
    assert result.exit_code == 1
    assert "notes.txt: not an accepted recording" in result.output

    fake = recording_file(tmp_path, "fake.wav", b"just text, not audio\n" * 20)
    result = run("upload", str(fake), url=live_api.url, key=key, state_dir=tmp_path)
    assert result.exit_code == 1
    assert "HTTP 415" in result.output
    assert "not a recognised audio or video format" in result.output

    a, b = recording_file(tmp_path, "a.wav"), recording_file(tmp_path, "b.wav")
    result = run("upload", str(a), str(b), "--title", "T", url=live_api.url, key=key,
                 state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 1
    assert "--title names one recording" in result.output

    result = run("upload", str(tmp_path / "missing.wav"), url=live_api.url, key=key,
                 state_dir=tmp_path)  # fmt: skip
    assert result.exit_code == 2, "typer refuses a missing file before anything runs"
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone() == (0,)
