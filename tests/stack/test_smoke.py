"""`record smoke` against the real local stack, reached as a deployment is: through an ingress
in front of it (here a small reverse proxy that, like the cluster's, routes only the paths of
infra/api.py's PUBLIC_PATHS and answers 404 to everything else: /metrics, /readyz, /livez).
The failing cases change what is outside Record: the ingress leaks /metrics or strips a
security header, the worker is stopped, the URL is wrong, espeak-ng is missing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from typer.testing import CliRunner

from app.cli import app
from infra.api import PUBLIC_PATHS
from tests.stack.conftest import RunningStack, free_port, start_stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CHECKS = [
    "readiness",
    "signup",
    "upload to ready",
    "search",
    "chat stream",
    "share link",
    "security headers",
    "metrics not public",
    "cleanup",
]
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"upgrade"}


def routed(path: str, *, route_metrics: bool = False) -> bool:
    """Whether the cluster's Ingress sends ``path`` to the API: its rules are PUBLIC_PATHS,
    matched as Kubernetes matches them (a Prefix by whole path elements)."""
    if route_metrics and path == "/metrics":
        return True
    for prefix, kind in PUBLIC_PATHS:
        if path == prefix or (kind == "Prefix" and path.startswith(prefix.rstrip("/") + "/")):
            return True
    return False


def test_the_test_ingress_routes_as_the_cluster_s_does():
    for public in ("/api/health", "/api", "/s/abc", "/docs/assets/x.js", "/openapi.json"):
        assert routed(public), public
    for private in ("/readyz", "/livez", "/metrics", "/apifoo", "/openapi.json/x", "/"):
        assert not routed(private), private
    assert routed("/metrics", route_metrics=True)


@pytest.fixture(scope="module")
def live(stack: RunningStack, stack_dir: Path) -> Iterator[RunningStack]:
    """The package's stack, or a new one on its state when test_local_stack stopped it."""
    if stack.proc.poll() is None:
        yield stack
        return
    again = start_stack(stack_dir, stack.api_port, stack.valkey_port)
    try:
        yield again
    finally:
        again.stop()


def ingress_app(upstream: str, *, route_metrics: bool, strip: set[str]):
    """An ASGI reverse proxy: streams both ways (uploads, SSE); routes only PUBLIC_PATHS (and
    /metrics when told to leak it), 404 for the rest."""
    client = httpx.AsyncClient(base_url=upstream, timeout=60)
    dropped = HOP_BY_HOP | {name.lower().encode() for name in strip}

    async def proxy(scope, receive, send):
        if scope["type"] == "lifespan":
            # Close the upstream connections with the server, not after its loop is gone.
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if not routed(scope["path"], route_metrics=route_metrics):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        target = scope["raw_path"].decode() + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        request = client.build_request(scope["method"], target, headers=headers, content=body)
        response = await client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in dropped
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return proxy


@contextmanager
def ingress(
    stack: RunningStack, *, route_metrics: bool = False, strip: set[str] | None = None
) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        ingress_app(stack.api_url, route_metrics=route_metrics, strip=strip or set()),
        host="127.0.0.1",
        port=port,
        lifespan="on",
        ws="none",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_smoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["smoke", "--poll-interval", "0.3", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def row(output: str, check: str) -> str:
    """The report's line for ``check`` with the lines its detail folds onto."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(check))
    end = start + 1
    while end < len(lines) and lines[end].strip().startswith("│"):
        end += 1
    return " ".join(lines[start:end])


def smoke_recordings(stack: RunningStack) -> list[dict]:
    env = stack.dev_env()
    response = httpx.get(
        f"{stack.api_url}/api/recordings",
        headers={"Authorization": f"Bearer {env['RECORD_API_KEY']}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return [r for r in response.json()["items"] if r["title"].startswith("smoke check")]


def test_the_full_smoke_passes_and_leaves_no_recording(live: RunningStack):
    with ingress(live) as url:
        code, output = run_smoke("--url", url, "--json")
    report = json.loads(output)
    assert code == 0, output
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert {c["status"] for c in report["checks"]} == {"ok"}, output
    created = report["created"]
    assert set(created) == {"account", "org", "api_key", "recording", "conversation", "share"}
    assert report["left_behind"] == [f"account {created['account']}"]
    # What it made is gone from the database, not only hidden from the API.
    with psycopg.connect(live.dev_env()["RECORD_DATABASE_URL"]) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM recordings WHERE id = %(r)s), "
            "(SELECT count(*) FROM orgs WHERE id = %(o)s)",
            {"r": created["recording"], "o": created["org"]},
        ).fetchone()
    assert counts == (0, 0)


def test_a_leaky_ingress_fails_with_readable_checks(live: RunningStack):
    """/metrics routed to the public and Referrer-Policy stripped: both named, exit 1."""
    key = live.dev_env()["RECORD_API_KEY"]
    with ingress(live, route_metrics=True, strip={"Referrer-Policy"}) as url:
        code, output = run_smoke("--url", url, "--api-key", key)
    assert code == 1, output
    headers = row(output, "security headers")
    assert "✗ fail" in headers
    assert "Referrer-Policy on GET /api/health (200)" in headers
    assert "strips them" in headers
    metrics = row(output, "metrics not public")
    assert "✗ fail" in metrics
    assert "serves Prometheus metrics" in metrics
    for passing in ("readiness", "api key", "upload to ready", "search", "share link", "cleanup"):
        assert "✓ ok" in row(output, passing), output
    assert "2 of 9 checks did not pass" in output
    assert smoke_recordings(live) == []


def worker_pid(stack: RunningStack) -> int:
    for pid in Path(f"/proc/{stack.proc.pid}/task/{stack.proc.pid}/children").read_text().split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"worker" in cmdline and any(part.endswith(b"record") for part in cmdline):
            return int(pid)
    raise AssertionError("no worker process under record up")


def test_a_stopped_worker_fails_the_upload_and_the_recording_is_still_deleted(
    live: RunningStack,
):
    key = live.dev_env()["RECORD_API_KEY"]
    worker = worker_pid(live)
    os.kill(worker, signal.SIGSTOP)
    try:
        with ingress(live) as url:
            code, output = run_smoke("--url", url, "--api-key", key, "--ready-timeout", "3")
    finally:
        os.kill(worker, signal.SIGCONT)
    report_line = row(output, "upload to ready")
    assert code == 1, output
    assert "✗ fail" in report_line
    assert "not ready after 3 s" in report_line
    assert "no worker took the job" in report_line
    for skipped in ("search", "chat stream", "share link"):
        assert "skipped" in row(output, skipped)
    assert "✓ ok" in row(output, "cleanup")
    assert smoke_recordings(live) == []


def test_without_espeak_the_upload_fails_and_says_what_to_install(
    live: RunningStack, tmp_path, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng here
    key = live.dev_env()["RECORD_API_KEY"]
    with ingress(live) as url:
        code, output = run_smoke("--url", url, "--api-key", key, "--json")
    assert code == 1
    checks = {c["name"]: c for c in json.loads(output)["checks"]}
    assert checks["upload to ready"]["status"] == "fail"
    assert "apt-get install espeak-ng" in checks["upload to ready"]["detail"]
    assert checks["search"]["status"] == "skipped"
    assert checks["readiness"]["ok"]
    assert checks["cleanup"]["ok"]


def test_a_wrong_url_fails_readiness_and_skips_the_rest():
    code, output = run_smoke("--url", f"http://127.0.0.1:{free_port()}", "--json")
    assert code == 1
    report = json.loads(output)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["readiness"]["status"] == "fail"
    assert "cannot reach" in checks["readiness"]["detail"]
    assert "Is the URL right" in checks["readiness"]["detail"]
    assert checks["upload to ready"]["status"] == "skipped"
    assert report["created"] == {}


class TlsIngress(httpx.BaseTransport):
    """What stands in front of a deployment, faked where the local stack has nothing: TLS
    termination for ``https://record.test`` and, with ``cut_streams``, a proxy that ends an
    event stream after its first event (buffering or an idle timeout)."""

    def __init__(self, upstream: str, *, cut_streams: bool) -> None:
        self.upstream = httpx.URL(upstream)
        self.inner = httpx.HTTPTransport()
        self.cut_streams = cut_streams

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not routed(request.url.path):
            return httpx.Response(404)
        request.url = request.url.copy_with(
            scheme="http", host=self.upstream.host, port=self.upstream.port
        )
        request.headers["host"] = self.upstream.netloc.decode()
        response = self.inner.handle_request(request)
        if not (
            self.cut_streams
            and response.headers.get("content-type", "").startswith("text/event-stream")
        ):
            return response
        first = b""
        for chunk in response.stream:
            first += chunk
            if b"\n\n" in first:
                break
        response.close()
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in {"content-length", "transfer-encoding"}
        }
        return httpx.Response(200, headers=headers, content=first.split(b"\n\n")[0] + b"\n\n")

    def close(self) -> None:
        self.inner.close()


def test_over_https_hsts_is_required_and_a_cut_event_stream_fails_chat(live: RunningStack):
    from app.smoke import SmokeOptions, SmokeRun

    options = SmokeOptions(
        url="https://record.test",
        api_key=live.dev_env()["RECORD_API_KEY"],
        poll_interval=0.3,
    )
    report = SmokeRun(options, TlsIngress(live.api_url, cut_streams=True)).run()
    checks = {c.name: c for c in report.checks}
    assert not report.ok
    # Locally the app runs as development, so it sends no HSTS: over https that is a failure.
    assert checks["security headers"].status == "fail"
    assert "Strict-Transport-Security on GET /api/health (200)" in checks["security headers"].detail
    assert checks["chat stream"].status == "fail"
    assert "ended without a done event (events: ['conversation'])" in checks["chat stream"].detail
    assert "buffering" in checks["chat stream"].detail
    failed = {name for name, check in checks.items() if not check.ok}
    assert failed == {"security headers", "chat stream"}, report.checks
    # The conversation the cut stream had started is deleted with the rest.
    assert {"conversation", "recording", "share"} <= set(report.created)
    assert report.left_behind == []
    assert smoke_recordings(live) == []
