"""A share link's id is its credential: no log line holds it, whatever logged it and however.

The redaction is one processor (``redact_secrets``) on every line, so these tests make lines
the way careless code would: the 500 handler's raw path, an exception whose text names the
URL, a message built with an f-string, a stdlib logger's %-arguments, a URL object.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog
from fastapi import FastAPI, Request

from app.kit.logging import configure_logging, redact_secrets
from tests.app.security.helpers import running_app

LINK = "Kq3vT9xWm2Lr8Yb5Nc7Hd4Fj6Gp1Zs0A"  # the shape of a real share id (32 url-safe chars)


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    configure_logging(level="WARNING", json=False)


def add_failing_share_route(app: FastAPI) -> None:
    @app.get("/s/{share_id}/test-only/boom")
    async def boom(request: Request) -> None:
        structlog.stdlib.get_logger("record.test").warning(
            f"opening {request.url}", url=request.url, where={"path": request.url.path}
        )
        logging.getLogger("record.test.stdlib").warning("serving %s", request.url.path)
        # The id alone (not in a path) has no shape to know it by; code must not log it bare.
        raise RuntimeError(f"could not render {request.url.path} for {request.client}")


@pytest.mark.parametrize("environment", ["production", "development"])
async def test_a_500_under_a_share_link_logs_no_share_id(
    settings: Any, capsys: pytest.CaptureFixture[str], environment: str
) -> None:
    async with running_app(
        settings, customize=add_failing_share_route, environment=environment, log_level="INFO"
    ) as http:
        capsys.readouterr()
        failed = await http.get(f"/s/{LINK}/test-only/boom?x=1")
        opened = await http.get(f"/s/{LINK}")  # an ordinary request: a link that is not there
        media = await http.get(f"/s/{LINK}/media")
    assert failed.status_code == 500
    assert (opened.status_code, media.status_code) == (404, 404)
    output = capsys.readouterr().err
    for written in ("unhandled error", "Traceback", "RuntimeError", "opening", "serving"):
        assert written in output
    assert LINK not in output
    assert LINK[:12] not in output
    assert "/s/[REDACTED]" in output
    if environment == "production":
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        failure = next(r for r in lines if r["event"] == "unhandled error")
        assert failure["path"] == "/s/[REDACTED]/test-only/boom"
        assert failure["route"] == "/s/{share_id}/test-only/boom"
        assert "could not render /s/[REDACTED]/test-only/boom" in failure["exception"]
        opening = next(r for r in lines if r["event"].startswith("opening"))
        assert opening["event"] == "opening http://testserver/s/[REDACTED]/test-only/boom?x=1"
        assert opening["url"] == opening["event"].removeprefix("opening ")
        assert opening["where"] == {"path": "/s/[REDACTED]/test-only/boom"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"/s/{LINK}", "/s/[REDACTED]"),
        (f"/s/{LINK}/media", "/s/[REDACTED]/media"),
        (f"https://record.example/s/{LINK}?t=1#x", "https://record.example/s/[REDACTED]?t=1#x"),
        (f'GET "/s/{LINK}" 500', 'GET "/s/[REDACTED]" 500'),
        ("/s/{share_id}/media", "/s/{share_id}/media"),  # a route template is no secret
        ("/api/shares/abc", "/api/shares/abc"),
    ],
)
def test_share_ids_are_redacted_in_any_text(value: str, expected: str) -> None:
    event = redact_secrets(None, "info", {"event": value, "nested": {"a": [value]}})
    assert event == {"event": expected, "nested": {"a": [expected]}}


def test_objects_that_render_a_share_path_are_redacted() -> None:
    from starlette.datastructures import URL

    url = URL(f"http://testserver/s/{LINK}/media")
    event = redact_secrets(None, "info", {"event": "x", "url": url, "error": ValueError(url.path)})
    assert event["url"] == "http://testserver/s/[REDACTED]/media"
    assert event["error"] == "/s/[REDACTED]/media"
    plain = redact_secrets(None, "info", {"event": "x", "n": 3, "ok": True, "none": None})
    assert plain == {"event": "x", "n": 3, "ok": True, "none": None}


@pytest.mark.parametrize(
    "line",
    [
        "GET /invite/ri_Q2xhc3NpZmllZFRva2VuVmFsdWVfMDEyMzQ1Njc4OQ HTTP/1.1 404",
        "GET /verify/rv_Q2xhc3NpZmllZFRva2VuVmFsdWVfMDEyMzQ1Njc4OQ HTTP/1.1 404",
        "GET /reset-password/rp_Q2xhc3NpZmllZFRva2VuVmFsdWVfMDEyMzQ1Njc4OQ HTTP/1.1 404",
        f"DELETE /api/share/{LINK} HTTP/1.1 401",
    ],
)
def test_mailed_link_tokens_and_share_ids_in_api_paths_are_redacted(line: str):
    # A mailed link clicked against the API (or a failed revoke) reaches the access log.
    event = redact_secrets(None, "info", {"event": line, "path": line.split()[1]})
    text = json.dumps(event)
    assert "Q2xhc3NpZmllZFRva2VuVmFsdWVf" not in text
    assert LINK not in text
    assert "[REDACTED]" in event["path"]
