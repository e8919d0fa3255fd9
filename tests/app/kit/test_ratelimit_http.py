"""The limiters as the API applies them: headers on limited responses, 429s, whom they count."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI, Response

from app.auth.deps import CurrentPrincipal
from app.kit.ratelimit import Decision, rate_limit
from tests.app.conftest import PASSWORD, make_tenant, signup

# Routes the search, upload and share domains will use the same way once they land.
probe_routes = APIRouter(prefix="/_test")


@probe_routes.get("/search")
async def search(
    principal: CurrentPrincipal,
    limit: Annotated[Decision | None, Depends(rate_limit("search"))],
) -> dict[str, Any]:
    return {"remaining": limit.remaining if limit else None}


@probe_routes.post("/upload", status_code=204)
async def upload(
    principal: CurrentPrincipal, _: Annotated[Decision | None, Depends(rate_limit("upload"))]
) -> Response:
    return Response(status_code=204)


@probe_routes.get("/public", dependencies=[Depends(rate_limit("anonymous"))])
async def public_page() -> dict[str, str]:
    return {"ok": "yes"}


@probe_routes.get("/misordered", dependencies=[Depends(rate_limit("search"))])
async def misordered(principal: CurrentPrincipal) -> dict[str, str]:
    return {"ok": "no"}


MakeApp = Callable[..., Awaitable[FastAPI]]


@pytest.fixture
async def make_app(settings: Any) -> AsyncIterator[MakeApp]:
    from app.main import create_app

    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> FastAPI:
            application = create_app(settings.model_copy(update=overrides))
            application.include_router(probe_routes)
            manager = await stack.enter_async_context(LifespanManager(application))
            await application.state.services.db.pool.wait(timeout=10)
            return manager.app  # type: ignore[return-value]

        yield make


def client_from(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def forget_limits(redis_url: str) -> None:
    """Start the test's counting from zero (making tenants spends some of the budget)."""
    client = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match="rl:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["x-ratelimit-limit"]),
        int(headers["x-ratelimit-remaining"]),
        int(headers["x-ratelimit-reset"]),
    )


def assert_429(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "rate_limited"
    assert body["request_id"] == response.headers["x-request-id"]
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert limit_headers(response) == (limit, 0, retry_after)


async def test_api_limit_per_caller_on_authenticated_routes(make_app, redis_url):
    app = await make_app(ratelimit_api="3/60")
    async with client_from(app) as client:
        org_a = await make_tenant(client, "Org A")
        org_b = await make_tenant(client, "Org B")
        await forget_limits(redis_url)

        for remaining in (2, 1, 0):
            response = await client.get("/api/recordings", headers=org_a.auth())
            assert response.status_code == 200
            limit, left, reset = limit_headers(response)
            assert (limit, left) == (3, remaining)
            assert 0 < reset <= 60  # delta seconds, not an epoch time
        refused = await client.get("/api/recordings", headers=org_a.auth())
        assert_429(refused, 3)

        # The owner's session is the same user: same budget. Another org's key is not.
        same_user = await client.get("/api/recordings", headers=org_a.session_auth())
        assert same_user.status_code == 429
        other = await client.get("/api/recordings", headers=org_b.auth())
        assert other.status_code == 200
        assert limit_headers(other)[:2] == (3, 2)

        # Unauthenticated requests are not counted (and get no headers).
        anonymous = await client.get("/api/recordings")
        assert anonymous.status_code == 401
        assert "x-ratelimit-limit" not in anonymous.headers


async def test_headers_on_a_204_route(make_app, redis_url):
    app = await make_app(ratelimit_api="10/60")
    async with client_from(app) as client:
        tenant = await make_tenant(client)
        created = await client.post(
            f"/api/orgs/{tenant.org_id}/api-keys",
            json={"name": "temp", "role": "reader"},
            headers=tenant.auth(),
        )
        assert created.status_code == 201
        assert "x-ratelimit-remaining" in created.headers
        await forget_limits(redis_url)
        deleted = await client.delete(
            f"/api/orgs/{tenant.org_id}/api-keys/{created.json()['id']}", headers=tenant.auth()
        )
        assert deleted.status_code == 204
        assert limit_headers(deleted)[:2] == (10, 9)


async def test_rate_limit_dependency_counts_per_user_and_reports_the_tightest(make_app, redis_url):
    app = await make_app(ratelimit_api="100/60", ratelimit_search="2/60")
    async with client_from(app) as client:
        tenant = await make_tenant(client)
        await forget_limits(redis_url)
        for remaining in (1, 0):
            response = await client.get("/_test/search", headers=tenant.auth())
            assert response.status_code == 200
            assert response.json() == {"remaining": remaining}
            # Both `api` and `search` counted; the headers show the one closer to refusing.
            assert limit_headers(response)[:2] == (2, remaining)
        assert_429(await client.get("/_test/search", headers=tenant.auth()), 2)
        # Other routes only meet `api`, which has room left.
        response = await client.get("/api/recordings", headers=tenant.auth())
        assert response.status_code == 200
        assert limit_headers(response)[:2] == (100, 96)


async def test_upload_limit_is_per_org_and_shows_on_204(make_app, redis_url):
    app = await make_app(ratelimit_upload="2/3600")
    async with client_from(app) as client:
        org_a = await make_tenant(client, "Org A")
        org_b = await make_tenant(client, "Org B")
        _, member_session = await org_a.member("contributor")
        await forget_limits(redis_url)

        first = await client.post("/_test/upload", headers=org_a.auth())
        assert first.status_code == 204
        assert limit_headers(first)[:2] == (2, 1)
        member_headers = {**org_a.session_auth(member_session)}
        assert (await client.post("/_test/upload", headers=member_headers)).status_code == 204
        # A third upload in the org, by either of its users, waits for the hour to slide.
        refused = await client.post("/_test/upload", headers=org_a.auth())
        assert_429(refused, 2)
        assert 3500 < int(refused.headers["retry-after"]) <= 3600
        assert (await client.post("/_test/upload", headers=org_b.auth())).status_code == 204


async def test_signup_limited_per_ip(make_app):
    app = await make_app(ratelimit_anonymous="2/60")
    async with client_from(app, "198.51.100.1") as one, client_from(app, "198.51.100.2") as two:
        await signup(one)
        response = await one.post(
            "/api/auth/signup", json={"email": "x1@example.com", "password": PASSWORD, "name": "X"}
        )
        assert response.status_code == 201
        assert limit_headers(response)[:2] == (2, 0)
        refused = await one.post(
            "/api/auth/signup", json={"email": "x2@example.com", "password": PASSWORD, "name": "X"}
        )
        assert_429(refused, 2)
        await signup(two)  # another address has its own budget


async def test_login_limited_per_email_across_ips(make_app, redis_url):
    app = await make_app(ratelimit_anonymous="3/60")
    async with client_from(app) as setup:
        victim = await signup(setup)
        await forget_limits(redis_url)

    async def attempt(ip: str, email: str, password: str = "wrong-password-123") -> int:
        async with client_from(app, ip) as client:
            response = await client.post(
                "/api/auth/login", json={"email": email, "password": password}
            )
            return response.status_code

    # One guess from each of many addresses: every IP is well under its own limit...
    assert [await attempt(f"203.0.113.{n}", victim["email"]) for n in range(1, 4)] == [401] * 3
    # ...but the account has had its three tries this minute, right password or not.
    assert await attempt("203.0.113.4", victim["email"], PASSWORD) == 429
    assert await attempt("203.0.113.5", victim["email"].upper()) == 429
    # Other accounts are unaffected.
    assert await attempt("203.0.113.6", "someone-else@example.com") == 401


async def test_login_limited_per_ip_across_emails(make_app):
    app = await make_app(ratelimit_anonymous="2/60")
    async with client_from(app, "198.51.100.9") as client:
        for n in range(2):
            response = await client.post(
                "/api/auth/login", json={"email": f"n{n}@example.com", "password": "x"}
            )
            assert response.status_code == 401
            assert "x-ratelimit-remaining" in response.headers  # on errors too
        response = await client.post(
            "/api/auth/login", json={"email": "n9@example.com", "password": "x"}
        )
        assert_429(response, 2)


async def test_forwarded_for_is_honoured_only_from_trusted_proxies(make_app):
    app = await make_app(ratelimit_anonymous="2/60", trusted_proxies=["10.0.0.0/8"])

    async def get(peer: str, xff: str) -> httpx.Response:
        async with client_from(app, peer) as client:
            return await client.get("/_test/public", headers={"X-Forwarded-For": xff})

    # Behind our proxy, each client has its own budget, whatever it claims on the left.
    assert (await get("10.0.0.5", "203.0.113.7")).status_code == 200
    assert (await get("10.0.0.6", "1.2.3.4, 203.0.113.7")).status_code == 200
    assert_429(await get("10.0.0.5", "203.0.113.7"), 2)
    assert (await get("10.0.0.5", "203.0.113.8")).status_code == 200

    # Straight from the internet, the header is the client's own word: ignored.
    statuses = [(await get("198.51.100.7", f"192.0.2.{n}")).status_code for n in range(3)]
    assert statuses == [200, 200, 429]


async def test_disabled_means_no_limits_and_no_headers(make_app):
    app = await make_app(ratelimit_enabled=False, ratelimit_api="1/60")
    async with client_from(app) as client:
        tenant = await make_tenant(client)
        for _ in range(3):
            response = await client.get("/api/recordings", headers=tenant.auth())
            assert response.status_code == 200
            assert "x-ratelimit-limit" not in response.headers


async def test_a_limit_declared_before_authentication_is_a_programmer_error(make_app):
    app = await make_app()
    async with client_from(app) as client:
        tenant = await make_tenant(client)
        response = await client.get("/_test/misordered", headers=tenant.auth())
        assert response.status_code == 500
