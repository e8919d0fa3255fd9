"""The limiters as the API applies them: headers on limited responses, 429s, whom they count."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI, Response

from app.auth.deps import CurrentPrincipal
from app.kit.ratelimit import Decision, email_subject, rate_limit, window_key
from tests.app.conftest import PASSWORD, Mailbox, make_tenant, signup

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


@probe_routes.post(
    "/password-reset", status_code=204, dependencies=[Depends(rate_limit("password_reset"))]
)
async def password_reset() -> Response:
    return Response(status_code=204)


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


async def test_upload_limit_is_per_org_and_shows_on_204(make_app, redis_url, settings):
    app = await make_app(ratelimit_upload="2/3600")
    async with client_from(app) as client:
        org_a = await make_tenant(client, "Org A", Mailbox(settings))
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
    app = await make_app(ratelimit_signup="2/60")
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


async def login(app: FastAPI, ip: str, email: str, password: str = "wrong-password-123") -> int:
    async with client_from(app, ip) as client:
        response = await client.post("/api/auth/login", json={"email": email, "password": password})
        return response.status_code


async def test_wrong_passwords_from_elsewhere_do_not_lock_the_owner_out(make_app, redis_url):
    # The finding: ten wrong passwords for someone's email, sent from anywhere, refused that
    # person's right password. Now an account's failures only slow its checks (by at most
    # the cap; a tiny one here so the test does not wait).
    app = await make_app(
        ratelimit_login_failures_ip_email="3/60",
        ratelimit_login_failures_ip="6/60",
        ratelimit_login_failures_email="20/60",
        ratelimit_login_delay_max_seconds=0.01,
    )
    async with client_from(app) as setup:
        victim = await signup(setup)
        await forget_limits(redis_url)

    attackers = [f"203.0.113.{n}" for n in range(1, 5)]
    statuses = [await login(app, ip, victim["email"]) for ip in attackers for _ in range(6)]
    assert statuses == ([401] * 3 + [429] * 3) * len(attackers)  # each address: 3 failures
    # Only the checked (and failed) passwords count against the account: 4 x 3, not 4 x 6.
    valkey = aioredis.Redis.from_url(redis_url)
    failures = await valkey.zcard(
        window_key("login_failures_email", email_subject(victim["email"]))
    )
    await valkey.aclose()
    assert failures == 12

    assert await login(app, "198.51.100.20", victim["email"], PASSWORD) == 200
    assert await login(app, "198.51.100.21", victim["email"].upper(), PASSWORD) == 200
    # Yet from an attacking address, even the right password waits for the window to slide.
    assert await login(app, attackers[0], victim["email"], PASSWORD) == 429


async def test_an_address_is_refused_after_its_failures_on_any_accounts(make_app, redis_url):
    app = await make_app(
        ratelimit_login_failures_ip="4/60", ratelimit_login_failures_ip_email="3/60"
    )
    async with client_from(app) as setup:
        user = await signup(setup)
        await forget_limits(redis_url)
    async with client_from(app, "198.51.100.9") as client:
        for n in range(4):
            response = await client.post(
                "/api/auth/login", json={"email": f"n{n}@example.com", "password": "x"}
            )
            assert response.status_code == 401
            assert "x-ratelimit-remaining" in response.headers  # on errors too
        response = await client.post(
            "/api/auth/login", json={"email": "n9@example.com", "password": "x"}
        )
        assert_429(response, 4)
        assert 55 <= int(response.headers["retry-after"]) <= 60
        # This address failed itself: its right passwords wait too...
        response = await client.post(
            "/api/auth/login", json={"email": user["email"], "password": PASSWORD}
        )
        assert_429(response, 4)
    # ...while other addresses are untouched.
    assert await login(app, "198.51.100.10", user["email"], PASSWORD) == 200
    assert await login(app, "198.51.100.10", "n9@example.com") == 401


async def test_failures_on_one_account_from_one_address(make_app, redis_url):
    app = await make_app(
        ratelimit_login_failures_ip_email="2/60",
        ratelimit_login_failures_ip="10/60",
        ratelimit_login_delay_max_seconds=0.01,
    )
    async with client_from(app) as setup:
        victim = await signup(setup)
        other = await signup(setup)
        await forget_limits(redis_url)

    guesser = "203.0.113.50"
    assert [await login(app, guesser, victim["email"]) for _ in range(2)] == [401, 401]
    async with client_from(app, guesser) as client:
        response = await client.post(
            "/api/auth/login", json={"email": victim["email"], "password": PASSWORD}
        )
        assert_429(response, 2)
    # The same address still tries other accounts (its own budget is 10 failures).
    assert await login(app, guesser, other["email"], PASSWORD) == 200
    assert await login(app, guesser, other["email"]) == 401

    # Successes cost nothing, and one forgives the address's earlier failures on the account.
    owner = "198.51.100.30"
    assert await login(app, owner, victim["email"]) == 401
    for _ in range(5):
        assert await login(app, owner, victim["email"], PASSWORD) == 200
    assert [await login(app, owner, victim["email"]) for _ in range(3)] == [401, 401, 429]


async def test_public_entry_points_have_separate_budgets(make_app, redis_url):
    app = await make_app(
        ratelimit_signup="2/60", ratelimit_share_page="3/60", ratelimit_password_reset="2/60"
    )
    page = "/s/" + "a" * 24  # no such link: a 404, counted like any page
    async with client_from(app, "198.51.100.40") as client:

        async def sign_up() -> httpx.Response:
            email = f"sep{uuid.uuid4().hex[:12]}@example.com"
            body = {"email": email, "password": PASSWORD, "name": "Sep"}
            return await client.post("/api/auth/signup", json=body)

        # Signups spent to the last: pages and resets keep their whole budgets.
        assert [(await sign_up()).status_code for _ in range(2)] == [201, 201]
        assert_429(await sign_up(), 2)
        response = await client.get(page)
        assert response.status_code == 404
        assert limit_headers(response)[:2] == (3, 2)
        response = await client.post("/_test/password-reset")
        assert response.status_code == 204
        assert limit_headers(response)[:2] == (2, 1)

        # Pages spent: resets keep theirs, and signups do not come back.
        for _ in range(2):
            assert (await client.get(page)).status_code == 404
        assert_429(await client.get(page), 3)
        assert (await client.post("/_test/password-reset")).status_code == 204
        assert_429(await client.post("/_test/password-reset"), 2)
        assert_429(await sign_up(), 2)

        # Logins are on none of these budgets.
        assert (
            await client.post("/api/auth/login", json={"email": "z@example.com", "password": "x"})
        ).status_code == 401

    # Another address starts afresh on each.
    async with client_from(app, "198.51.100.41") as client:
        assert (await client.post("/_test/password-reset")).status_code == 204
        assert (await client.get(page)).status_code == 404


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
