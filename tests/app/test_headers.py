"""Security headers on every kind of response, HSTS only in production, CORS by allowlist."""

from __future__ import annotations

import pytest

from tests.app.security.helpers import add_failing_route, running_app

EXPECTED = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-xss-protection": "0",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def _assert_security_headers(response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "object-src 'none'" in csp
    assert "'unsafe-inline'" not in csp
    assert "microphone=(self)" in response.headers["permissions-policy"]
    assert response.headers["x-request-id"]


async def test_headers_on_api_errors_and_anonymous_routes(client, org_a) -> None:
    cases = [
        (await client.get("/api/recordings", headers=org_a.auth()), 200),
        (await client.get("/api/recordings"), 401),
        (
            await client.get(
                "/api/recordings/3f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b", headers=org_a.auth()
            ),
            404,
        ),
        (await client.get("/no/such/route"), 404),
        (await client.get("/livez"), 200),
        (await client.get("/openapi.json"), 200),
    ]
    for response, status in cases:
        assert response.status_code == status
        _assert_security_headers(response)
        # Not production: no HSTS (it would pin plain-http dev servers to https).
        assert "strict-transport-security" not in response.headers


async def test_headers_on_a_500_and_hsts_in_production(settings) -> None:
    async with running_app(settings, customize=add_failing_route, environment="production") as http:
        for path, status in [("/api/test-only/boom/1", 500), ("/livez", 200), ("/api/me", 401)]:
            response = await http.get(path)
            assert response.status_code == status
            _assert_security_headers(response)
            hsts = response.headers["strict-transport-security"]
            assert "max-age=63072000" in hsts
            assert "includeSubDomains" in hsts


@pytest.fixture
async def cors(settings):
    async with running_app(settings, cors_origins=["https://app.example.com"]) as http:
        yield http


async def test_cors_allowed_origin(cors, org_a) -> None:
    response = await cors.get(
        "/livez", headers={"Origin": "https://app.example.com", **org_a.auth()}
    )
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    _assert_security_headers(response)


async def test_cors_other_origin_gets_nothing(cors) -> None:
    response = await cors.get("/livez", headers={"Origin": "https://evil.example.net"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    response = await cors.options(
        "/api/recordings",
        headers={
            "Origin": "https://evil.example.net",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_preflight(cors) -> None:
    response = await cors.options(
        "/api/recordings",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, x-record-org",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "PATCH" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "x-record-org" in allowed
    assert response.headers["access-control-max-age"] == "600"
    _assert_security_headers(response)


async def test_no_cors_without_an_allowlist(client) -> None:
    response = await client.get("/livez", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers
