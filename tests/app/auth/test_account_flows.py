"""Email verification, password change and reset by mailed token, signing out everywhere, and
API keys capped by their maker's role (findings 1 and 2; hardening: keys see one org)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.app.conftest import PASSWORD, Mailbox, Tenant, signup

NEW_PASSWORD = "quartz-lantern-meadow-77"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client, email: str, password: str = PASSWORD):
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def test_signup_mails_a_verification_link_that_works_once(client, mailbox: Mailbox):
    user = await signup(client, name="Vera")
    assert user["user"]["email_verified"] is False
    token = await mailbox.token(user["email"], "verify")
    assert token.startswith("rv_")
    [message] = mailbox.messages(user["email"])
    assert message["From"] == mailbox.settings.mail_from
    assert message["Subject"] == "Confirm your email for Record"
    mine = bearer(user["session_token"])
    # Signed out, or signed in as someone else, the link does nothing.
    assert (await client.post("/api/auth/verify", json={"token": token})).status_code == 401
    other = await signup(client, name="Other")
    response = await client.post(
        "/api/auth/verify", json={"token": token}, headers=bearer(other["session_token"])
    )
    assert response.status_code == 400
    response = await client.post("/api/auth/verify", json={"token": token}, headers=mine)
    assert response.status_code == 204
    me = await client.get("/api/me", headers=bearer(user["session_token"]))
    assert me.json()["user"]["email_verified"] is True
    again = await client.post("/api/auth/verify", json={"token": token}, headers=mine)
    assert again.status_code == 400
    assert again.headers["content-type"] == "application/problem+json"
    # Verified already: asking for another link is a conflict.
    resend = await client.post("/api/auth/verify/resend", headers=bearer(user["session_token"]))
    assert resend.status_code == 409


async def test_a_resent_link_retires_the_first(client, mailbox: Mailbox):
    user = await signup(client, name="Rhea")
    first = await mailbox.token(user["email"], "verify")
    resend = await client.post("/api/auth/verify/resend", headers=bearer(user["session_token"]))
    assert resend.status_code == 202
    second = await mailbox.token(user["email"], "verify")
    assert first != second
    me = bearer(user["session_token"])
    response = await client.post("/api/auth/verify", json={"token": first}, headers=me)
    assert response.status_code == 400
    response = await client.post("/api/auth/verify", json={"token": second}, headers=me)
    assert response.status_code == 204


async def test_password_change_needs_the_old_one_and_ends_other_sessions(client, mailbox: Mailbox):
    user = await signup(client, name="Pat")
    other = (await login(client, user["email"])).json()["session_token"]
    body = {"old": "not-the-password-at-all", "new": NEW_PASSWORD}
    response = await client.post(
        "/api/auth/password", json=body, headers=bearer(user["session_token"])
    )
    assert response.status_code == 403
    assert response.json()["code"] == "wrong_password"
    weak = {"old": PASSWORD, "new": "password1234"}
    response = await client.post(
        "/api/auth/password", json=weak, headers=bearer(user["session_token"])
    )
    assert response.status_code == 400
    body = {"old": PASSWORD, "new": NEW_PASSWORD}
    response = await client.post(
        "/api/auth/password", json=body, headers=bearer(user["session_token"])
    )
    assert response.status_code == 204
    assert (await client.get("/api/me", headers=bearer(user["session_token"]))).status_code == 200
    assert (await client.get("/api/me", headers=bearer(other))).status_code == 401
    assert (await login(client, user["email"])).status_code == 401
    assert (await login(client, user["email"], NEW_PASSWORD)).status_code == 200
    # The owner of the address hears of it (if it was not them, they reset the password).
    await mailbox.deliver()
    subjects = [m["Subject"] for m in mailbox.messages(user["email"])]
    assert subjects.count("Your Record password was changed") == 1


async def test_password_change_refuses_api_keys(client, org_a: Tenant):
    body = {"old": PASSWORD, "new": NEW_PASSWORD}
    response = await client.post("/api/auth/password", json=body, headers=org_a.auth())
    assert response.status_code == 403
    assert (await login(client, org_a.email)).status_code == 200


async def test_sign_out_everywhere(client, org_a: Tenant):
    second = (await login(client, org_a.email)).json()["session_token"]
    response = await client.post("/api/auth/logout-all", headers=bearer(org_a.session))
    assert response.status_code == 204
    for token in (org_a.session, second):
        assert (await client.get("/api/me", headers=bearer(token))).status_code == 401
    # A key is not a session: it keeps working (revoke keys separately).
    assert (await client.get("/api/me", headers=org_a.auth())).status_code == 200
    assert (await client.post("/api/auth/logout-all", headers=org_a.auth())).status_code == 403


async def test_password_reset_answers_alike_and_mails_only_real_accounts(client, mailbox: Mailbox):
    user = await signup(client, name="Rita")
    known = await client.post("/api/auth/password-reset", json={"email": user["email"]})
    unknown = await client.post("/api/auth/password-reset", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    await mailbox.deliver()
    assert mailbox.messages("nobody@example.com") == []
    token = await mailbox.token(user["email"], "reset-password")
    assert token.startswith("rp_")
    other = (await login(client, user["email"])).json()["session_token"]
    weak = {"token": token, "password": "short"}
    response = await client.post("/api/auth/password-reset/confirm", json=weak)
    assert response.status_code == 400
    body = {"token": token, "password": NEW_PASSWORD}
    response = await client.post("/api/auth/password-reset/confirm", json=body)
    assert response.status_code == 204
    # Every session ended; the new password works, the old one not; the email is verified.
    for session in (user["session_token"], other):
        assert (await client.get("/api/me", headers=bearer(session))).status_code == 401
    assert (await login(client, user["email"])).status_code == 401
    fresh = await login(client, user["email"], NEW_PASSWORD)
    assert fresh.status_code == 200
    me = await client.get("/api/me", headers=bearer(fresh.json()["session_token"]))
    assert me.json()["user"]["email_verified"] is True
    # Single use.
    again = await client.post("/api/auth/password-reset/confirm", json=body)
    assert again.status_code == 400


async def test_a_reset_takes_an_address_back_from_a_squatter(
    client, org_a: Tenant, mailbox: Mailbox
):
    """Someone signed up with a colleague's address first; the colleague, who reads that mail,
    resets the password: the squatter is signed out, and the account can then be invited."""
    squatter = await signup(client, name="Squatter")
    await client.post("/api/auth/password-reset", json={"email": squatter["email"]})
    token = await mailbox.token(squatter["email"], "reset-password")
    body = {"token": token, "password": NEW_PASSWORD}
    assert (await client.post("/api/auth/password-reset/confirm", json=body)).status_code == 204
    assert (
        await client.get("/api/me", headers=bearer(squatter["session_token"]))
    ).status_code == 401
    owner = (await login(client, squatter["email"], NEW_PASSWORD)).json()["session_token"]
    await org_a.join(squatter["email"], owner, "reader")


# Finding 2: a key acts with the lower of its role and its maker's current role.
async def test_a_demoted_makers_owner_key_is_demoted_with_them(client, org_a: Tenant):
    second_id, second_session = await org_a.member("owner")
    # The second owner makes an owner key, then is demoted to reader by the first.
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/api-keys",
        json={"name": "deploy", "role": "owner"},
        headers={**bearer(second_session), "X-Record-Org": org_a.org_id},
    )
    assert response.status_code == 201
    key = response.json()["key"]
    keys_url = f"/api/orgs/{org_a.org_id}/api-keys"
    assert (await client.get(keys_url, headers=bearer(key))).status_code == 200
    demoted = await client.patch(
        f"/api/orgs/{org_a.org_id}/members/{second_id}",
        json={"role": "reader"},
        headers=org_a.auth(),
    )
    assert demoted.status_code == 200
    assert (await client.get(keys_url, headers=bearer(key))).status_code == 403
    me = await client.get("/api/me", headers=bearer(key))
    assert me.json()["org"]["role"] == "reader"
    # Promoted back to admin: the owner key acts as an admin, no more.
    await client.patch(
        f"/api/orgs/{org_a.org_id}/members/{second_id}",
        json={"role": "admin"},
        headers=org_a.auth(),
    )
    me = await client.get("/api/me", headers=bearer(key))
    assert me.json()["org"]["role"] == "admin"
    response = await client.delete(f"/api/orgs/{org_a.org_id}", headers=bearer(key))
    assert response.status_code == 403


async def test_a_key_whose_maker_is_gone_authenticates_nobody(client, org_a: Tenant, database_url):
    user_id, session = await org_a.member("admin")
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/api-keys",
        json={"name": "bot", "role": "reader"},
        headers={**bearer(session), "X-Record-Org": org_a.org_id},
    )
    key = response.json()["key"]
    # Even had the key not been revoked with the membership, it no longer authenticates.
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM memberships WHERE user_id = %s", (user_id,))
    assert (await client.get("/api/me", headers=bearer(key))).status_code == 401


# Hardening: a key's transaction sees its own org, not its maker's other orgs.
async def test_a_key_does_not_see_its_makers_other_orgs(
    client, org_a: Tenant, org_b: Tenant, database_url, mailbox: Mailbox
):
    await mailbox.verify(client, org_a.email, org_a.session)
    await org_b.join(org_a.email, org_a.session, "reader")  # org_a's owner also in org B
    me = await client.get("/api/me", headers=org_a.auth())
    assert [o["id"] for o in me.json()["orgs"]] == [org_a.org_id]
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE record_app")
        conn.execute(
            "SELECT set_config('app.org_id', %s, true), set_config('app.user_id', %s, true), "
            "set_config('app.key_id', %s, true)",
            (org_a.org_id, org_a.user_id, str(uuid.uuid4())),
        )
        orgs = {r[0] for r in conn.execute("SELECT id::text FROM orgs")}
        memberships = {r[0] for r in conn.execute("SELECT org_id::text FROM memberships")}
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()
        conn.execute("SELECT set_config('app.key_id', '', true)")
        as_person = {r[0] for r in conn.execute("SELECT id::text FROM orgs")}
    assert orgs == {org_a.org_id}
    assert memberships == {org_a.org_id}
    assert sessions == (0,)
    assert as_person == {org_a.org_id, org_b.org_id}  # the person, signed in, sees both


@pytest.mark.parametrize("path", ["/api/auth/verify", "/api/auth/password-reset/confirm"])
async def test_mailed_tokens_refuse_garbage(client, path):
    user = await signup(client, name="Gary")
    body = {"token": "rv_" + "x" * 40}
    if path.endswith("confirm"):
        body["password"] = NEW_PASSWORD
    response = await client.post(path, json=body, headers=bearer(user["session_token"]))
    assert response.status_code == 400


async def test_a_squatter_cannot_have_the_address_owner_verify_their_account(
    client, org_a: Tenant, mailbox: Mailbox
):
    """The attack: sign up with a colleague's address; they get "confirm your email" and
    click it. Verified, the account would take their identity provider's sign-in, and with it
    their org, while the squatter still knows its password. A link verifies only the account
    signed in to it, so the click does nothing; the colleague resets the password instead,
    which ends the squatter's sessions and the keys they made."""
    squatter = await signup(client, name="Squatter")
    key = await client.post(
        f"/api/orgs/{squatter['org']['id']}/api-keys",
        json={"name": "backdoor", "role": "owner"},
        headers={**bearer(squatter["session_token"]), "X-Record-Org": squatter["org"]["id"]},
    )
    assert key.status_code == 201
    token = await mailbox.token(squatter["email"], "verify")
    assert (await client.post("/api/auth/verify", json={"token": token})).status_code == 401
    await client.post("/api/auth/password-reset", json={"email": squatter["email"]})
    reset = await mailbox.token(squatter["email"], "reset-password")
    body = {"token": reset, "password": NEW_PASSWORD}
    assert (await client.post("/api/auth/password-reset/confirm", json=body)).status_code == 204
    assert (await client.get("/api/me", headers=bearer(key.json()["key"]))).status_code == 401
    assert (
        await client.get("/api/me", headers=bearer(squatter["session_token"]))
    ).status_code == 401


async def test_where_signup_is_closed_unverified_accounts_open_no_orgs(
    client, org_a: Tenant, mailbox: Mailbox, app
):
    from app.settings import SignupMode

    services = app.state.services
    original = services.settings
    await client.post(
        f"/api/orgs/{org_a.org_id}/members",
        json={"email": "invited@example.com", "role": "reader"},
        headers=org_a.auth(),
    )
    services.settings = original.model_copy(update={"signup_mode": SignupMode.invite_only})
    try:
        # Anyone may sign up with an invited address; that proves nothing about the mailbox.
        user = await client.post(
            "/api/auth/signup",
            json={"email": "invited@example.com", "password": PASSWORD, "name": "I"},
        )
        assert user.status_code == 201
        session = user.json()["session_token"]
        response = await client.post("/api/orgs", json={"name": "Mine"}, headers=bearer(session))
        assert response.status_code == 403
        await mailbox.verify(client, "invited@example.com", session)
        response = await client.post("/api/orgs", json={"name": "Mine"}, headers=bearer(session))
        assert response.status_code == 201
    finally:
        services.settings = original


async def test_guessing_the_current_password_meets_the_login_limits(client):
    user = await signup(client, name="Gus")
    body = {"old": "wrong-guess-at-the-password", "new": NEW_PASSWORD}
    statuses = [
        (
            await client.post(
                "/api/auth/password", json=body, headers=bearer(user["session_token"])
            )
        ).status_code
        for _ in range(6)
    ]
    assert statuses == [403] * 5 + [429]
