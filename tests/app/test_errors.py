"""Operational errors (4xx, said plainly) and programmer errors (500, said nothing) are kept
apart; bodies over the limit are refused; every response names its request."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import REGISTRY

from tests.app.security.helpers import add_failing_route, running_app

PROBLEM_KEYS_500 = {"type", "title", "status", "detail", "code", "instance", "request_id"}


def _unhandled(route: str) -> float:
    value = REGISTRY.get_sample_value("record_http_unhandled_errors_total", {"route": route})
    return value or 0.0


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


async def test_500_in_production_says_nothing_but_is_logged_and_counted(settings, capsys) -> None:
    route = "/api/test-only/boom/{thing_id}"
    before = _unhandled(route)
    async with running_app(
        settings, customize=add_failing_route, environment="production", log_level="INFO"
    ) as http:
        response = await http.get(
            "/api/test-only/boom/42", headers={"X-Request-ID": "trace-me-123"}
        )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == PROBLEM_KEYS_500
    assert body["request_id"] == "trace-me-123" == response.headers["x-request-id"]
    for leak in ("SELECT", "hunter2", "RuntimeError", "Traceback", "psycopg", "users"):
        assert leak not in response.text
    assert _unhandled(route) == before + 1

    records = _json_lines(capsys.readouterr().err)
    failure = next(r for r in records if r.get("event") == "unhandled error")
    assert failure["level"] == "error"
    assert failure["request_id"] == "trace-me-123"
    assert failure["route"] == route
    assert "Traceback" in failure["exception"]
    assert "RuntimeError" in failure["exception"]
    # The password-shaped value in the exception message is redacted even in the log.
    assert "hunter2-secret" not in json.dumps(records)


async def test_500_in_development_says_what_failed(settings) -> None:
    async with running_app(
        settings, customize=add_failing_route, environment="development"
    ) as http:
        response = await http.get("/api/test-only/boom/1")
    assert response.status_code == 500
    assert "RuntimeError" in response.json()["debug"]


async def test_operational_errors_are_4xx_with_a_useful_detail(client, org_a) -> None:
    response = await client.get("/api/recordings")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in response.json()["detail"]
    response = await client.get(
        "/api/recordings/3f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b", headers=org_a.auth()
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    response = await client.delete("/livez")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_validation_errors_are_400_and_never_echo_the_input(client) -> None:
    secret = "correct-horse-battery-staple-9000"
    response = await client.post(
        "/api/auth/login",
        json={"email": "not-an-email", "password": secret, "surprise": secret},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_error"
    locs = {tuple(err["loc"]) for err in body["errors"]}
    assert ("body", "email") in locs
    assert ("body", "surprise") in locs
    for err in body["errors"]:
        assert set(err) == {"loc", "msg", "type"}
    assert secret not in response.text
    assert "not-an-email" not in json.dumps(body["errors"])


async def test_malformed_json_is_400(client) -> None:
    response = await client.post(
        "/api/auth/login", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


async def test_body_over_limit_by_content_length_is_413(settings) -> None:
    async with running_app(settings, max_body_bytes=2048) as http:
        response = await http.post(
            "/api/auth/login",
            content=b"x" * 4096,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "payload_too_large"
    assert response.headers["x-request-id"]


async def test_body_over_limit_while_streaming_is_413(settings) -> None:
    async def chunks() -> Any:
        for _ in range(8):
            yield b" " * 1024

    async with running_app(settings, max_body_bytes=2048) as http:
        # A generator body is sent chunked: no Content-Length to judge by.
        response = await http.post(
            "/api/auth/login", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_body_under_limit_passes(settings) -> None:
    async with running_app(settings, max_body_bytes=2048) as http:
        response = await http.post(
            "/api/auth/login", json={"email": "a@example.com", "password": "x" * 100}
        )
    assert response.status_code == 401


async def test_every_response_has_a_request_id(client, org_a) -> None:
    seen = set()
    for method, path, headers in [
        ("GET", "/livez", {}),
        ("GET", "/readyz", {}),
        ("GET", "/api/me", org_a.auth()),
        ("GET", "/api/me", {}),
        ("GET", "/nowhere", {}),
        ("POST", "/api/auth/login", {}),
    ]:
        response = await client.request(method, path, headers=headers)
        request_id = response.headers["x-request-id"]
        assert len(request_id) == 32
        seen.add(request_id)
    assert len(seen) == 6  # fresh for each request


async def test_incoming_request_id_echoed_only_when_safe(client) -> None:
    response = await client.get("/livez", headers={"X-Request-ID": "abc-123.XYZ_789"})
    assert response.headers["x-request-id"] == "abc-123.XYZ_789"
    for unsafe in ("short", "x" * 65, "a b c d e f g h", "<script>alert(1)</script>", "ok\r\nX: 1"):
        try:
            response = await client.get("/livez", headers={"X-Request-ID": unsafe})
        except Exception:  # httpx itself refuses header injection
            continue
        assert response.headers["x-request-id"] != unsafe
        assert len(response.headers["x-request-id"]) == 32
