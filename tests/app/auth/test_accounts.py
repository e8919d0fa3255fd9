"""Signup, login, sessions and API keys as credentials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from app.settings import SignupMode
from tests.app.conftest import PASSWORD, Tenant, signup


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short1!", "at least 12"),
        ("password1234", "too common"),
        ("qwertyuiop123", "too common"),
    ],
)
async def test_signup_refuses_weak_passwords(client, password: str, reason: str):
    response = await client.post(
        "/api/auth/signup", json={"email": "w@example.com", "password": password, "name": "W"}
    )
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    assert password not in response.text  # never echoed


async def test_signup_refuses_password_with_email(client):
    response = await client.post(
        "/api/auth/signup",
        json={"email": "marigold@example.com", "password": "marigold-winter-9931", "name": "M"},
    )
    assert response.status_code == 400
    assert "email" in response.json()["detail"]


async def test_signup_stores_argon2id_hash_and_refuses_duplicates(client, settings):
    user = await signup(client)
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute(
            "SELECT password_hash FROM users WHERE id = %s", (user["user"]["id"],)
        ).fetchone()[0]
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    response = await client.post(
        "/api/auth/signup",
        json={"email": user["email"].upper(), "password": PASSWORD, "name": "Again"},
    )
    assert response.status_code == 409


async def test_login_logout_and_session_expiry(client, settings):
    user = await signup(client)
    bad = await client.post("/api/auth/login", json={"email": user["email"], "password": "nope"})
    assert bad.status_code == 401
    unknown = await client.post(
        "/api/auth/login", json={"email": "ghost@example.com", "password": PASSWORD}
    )
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == bad.json()["detail"]  # no user enumeration

    response = await client.post(
        "/api/auth/login", json={"email": user["email"], "password": PASSWORD}
    )
    assert response.status_code == 200
    token = response.json()["session_token"]
    assert token.startswith("rs_")
    headers = {"Authorization": f"Bearer {token}"}
    me = await client.get("/api/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["user"]["email"] == user["email"]
    assert me.json()["auth"] == "session"

    # Sessions are stored hashed.
    with psycopg.connect(settings.database_url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM sessions WHERE token_hash = %s", (token.encode(),)
            ).fetchone()[0]
            == 0
        )

    assert (await client.post("/api/auth/logout", headers=headers)).status_code == 204
    assert (await client.get("/api/me", headers=headers)).status_code == 401

    # An expired session is refused.
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE sessions SET expires_at = %s", (datetime.now(UTC) - timedelta(seconds=1),)
        )
    old = {"Authorization": f"Bearer {user['session_token']}"}
    response = await client.get("/api/me", headers=old)
    assert response.status_code == 401
    assert "log in again" in response.json()["detail"]


async def test_logout_with_api_key_is_400(client, org_a: Tenant):
    response = await client.post("/api/auth/logout", headers=org_a.auth())
    assert response.status_code == 400


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic abc", "Bearer rk_nope", "Bearer rs_nope", "Bearer a.b.c", "Bearer x"],
)
async def test_bad_credentials_are_401_problems(client, header: str):
    response = await client.get("/api/recordings", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_me_with_api_key(client, org_a: Tenant):
    me = (await client.get("/api/me", headers=org_a.auth())).json()
    assert me["auth"] == "api_key"
    assert me["org"]["id"] == org_a.org_id
    assert me["org"]["role"] == "owner"
    assert me["api_key_id"] is not None


async def test_bad_org_header(client, org_a: Tenant):
    headers = {"Authorization": f"Bearer {org_a.session}", "X-Record-Org": "not-a-uuid"}
    response = await client.get("/api/recordings", headers=headers)
    assert response.status_code == 400
    # An API key with another org's header: that org is not found.
    headers = {**org_a.auth(), "X-Record-Org": "00000000-0000-4000-8000-000000000000"}
    assert (await client.get("/api/recordings", headers=headers)).status_code == 404


@pytest.fixture
def invite_only(app):
    services = app.state.services
    original = services.settings
    services.settings = original.model_copy(update={"signup_mode": SignupMode.invite_only})
    yield
    services.settings = original


async def test_invite_only_signup(client, org_a: Tenant, invite_only):
    response = await client.post(
        "/api/auth/signup", json={"email": "x1@example.com", "password": PASSWORD, "name": "X"}
    )
    assert response.status_code == 403
    assert "invitation" in response.json()["detail"]
    await client.post(
        f"/api/orgs/{org_a.org_id}/members",
        json={"email": "x1@example.com", "role": "reader"},
        headers=org_a.auth(),
    )
    response = await client.post(
        "/api/auth/signup", json={"email": "x1@example.com", "password": PASSWORD, "name": "X"}
    )
    assert response.status_code == 201
    # An account, in no org yet: it joins by accepting the mailed invitation once verified.
    assert response.json()["org"] is None
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    assert "x1@example.com" not in {m["email"] for m in members.json()["items"]}


async def test_disabled_signup(client, app):
    services = app.state.services
    original = services.settings
    services.settings = original.model_copy(update={"signup_mode": SignupMode.disabled})
    try:
        response = await client.post(
            "/api/auth/signup", json={"email": "d@example.com", "password": PASSWORD, "name": "D"}
        )
        assert response.status_code == 403
    finally:
        services.settings = original


async def test_concurrent_signups_for_one_email_make_one_account(client):
    import asyncio

    body = {"email": "race@example.com", "password": PASSWORD, "name": "Race"}
    responses = await asyncio.gather(
        *[client.post("/api/auth/signup", json=body) for _ in range(4)]
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409]
