"""Invitations by mailed token (finding 1): nobody joins an org without the link mailed to the
invited address, accepted signed in with that address verified. Real PostgreSQL, Valkey and
worker task; the mail is read from the local mail drop."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from tests.app.conftest import PASSWORD, Mailbox, Tenant, signup


async def invite(client, tenant: Tenant, email: str, role: str = "reader", token=None):
    return await client.post(
        f"/api/orgs/{tenant.org_id}/members",
        json={"email": email, "role": role},
        headers=tenant.auth(token),
    )


async def accept(client, session: str, token: str):
    return await client.post(
        "/api/invitations/accept",
        json={"token": token},
        headers={"Authorization": f"Bearer {session}"},
    )


async def member_emails(client, tenant: Tenant) -> set[str]:
    response = await client.get(f"/api/orgs/{tenant.org_id}/members", headers=tenant.auth())
    return {m["email"] for m in response.json()["items"]}


async def test_signing_up_with_an_invited_address_joins_nothing(
    client, org_a: Tenant, mailbox: Mailbox
):
    # The attack: an outsider learns that bob@ is invited and signs up as bob@ first.
    response = await invite(client, org_a, "bob@example.com", "admin")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "email", "role", "invited_by", "created_at", "expires_at"}
    days = (datetime.fromisoformat(body["expires_at"]) - datetime.now(UTC)).total_seconds() / 86400
    assert 6.9 < days <= 7
    squatter = await client.post(
        "/api/auth/signup",
        json={"email": "bob@example.com", "password": PASSWORD, "name": "Not Bob"},
    )
    assert squatter.status_code == 201
    assert squatter.json()["org"]["id"] != org_a.org_id
    assert "bob@example.com" not in await member_emails(client, org_a)
    me = await client.get(
        "/api/me", headers={"Authorization": f"Bearer {squatter.json()['session_token']}"}
    )
    assert org_a.org_id not in {o["id"] for o in me.json()["orgs"]}
    # Even holding the token (say it leaked), an unverified account cannot accept.
    token = await mailbox.token("bob@example.com", "invite")
    response = await accept(client, squatter.json()["session_token"], token)
    assert response.status_code == 403
    assert "Verify your email" in response.json()["detail"]
    assert "bob@example.com" not in await member_emails(client, org_a)


async def test_an_invited_person_joins_with_the_mailed_link_once(
    client, org_a: Tenant, org_b: Tenant, mailbox: Mailbox, database_url
):
    user = await signup(client, name="Carol")
    await mailbox.verify(client, user["email"], user["session_token"])
    assert (await invite(client, org_a, user["email"], "contributor")).status_code == 201
    # Invited is not joined: an existing account is not added until it accepts.
    assert user["email"] not in await member_emails(client, org_a)
    token = await mailbox.token(user["email"], "invite")
    [message] = [m for m in mailbox.messages(user["email"]) if "/invite/" in m.get_content()]
    assert message["Subject"] == "Join Org A on Record"
    assert "http://127.0.0.1:8000/invite/ri_" in message.get_content()
    # Only the invited address: someone else, signed in and verified, is refused.
    other = await signup(client, name="Mallory")
    await mailbox.verify(client, other["email"], other["session_token"])
    response = await accept(client, other["session_token"], token)
    assert response.status_code == 403
    assert "another address" in response.json()["detail"]
    # An API key cannot accept for anybody.
    response = await accept(client, org_b.owner_key, token)
    assert response.status_code == 403
    response = await accept(client, user["session_token"], token)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": org_a.org_id, "name": "Org A", "role": "contributor"}
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    roles = {m["email"]: m["role"] for m in members.json()["items"]}
    assert roles[user["email"]] == "contributor"
    # Single use.
    again = await accept(client, user["session_token"], token)
    assert again.status_code == 404
    assert again.headers["content-type"] == "application/problem+json"
    # The token is stored hashed: the database never holds it.
    with psycopg.connect(database_url) as conn:
        leaked = conn.execute(
            "SELECT count(*) FROM invitations AS i WHERE row_to_json(i)::text LIKE %s",
            (f"%{token}%",),
        ).fetchone()
        in_queue = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE args::text LIKE %s", (f"%{token}%",)
        ).fetchone()
        joined = conn.execute(
            "SELECT actor_user_id::text FROM audit_log WHERE action = 'member.join' "
            "AND org_id = %s",
            (org_a.org_id,),
        ).fetchall()
    assert leaked == (0,)
    assert in_queue == (0,)
    assert joined == [(user["user"]["id"],)]


async def test_invitations_are_listed_revoked_and_expire(
    client, org_a: Tenant, org_b: Tenant, mailbox: Mailbox, database_url
):
    user = await signup(client, name="Dan")
    await mailbox.verify(client, user["email"], user["session_token"])
    created = (await invite(client, org_a, user["email"])).json()
    url = f"/api/orgs/{org_a.org_id}/invitations"
    listed = await client.get(url, headers=org_a.auth())
    assert [i["id"] for i in listed.json()["items"]] == [created["id"]]
    # Two orgs: the other org sees none of them and cannot revoke them.
    assert (await client.get(url, headers=org_b.auth())).status_code == 404
    other = await client.get(f"/api/orgs/{org_b.org_id}/invitations", headers=org_b.auth())
    assert other.json()["items"] == []
    response = await client.delete(
        f"/api/orgs/{org_b.org_id}/invitations/{created['id']}", headers=org_b.auth()
    )
    assert response.status_code == 404
    # Readers and contributors do not manage invitations.
    reader = await org_a.key("reader")
    assert (await client.get(url, headers=org_a.auth(reader))).status_code == 403
    token = await mailbox.token(user["email"], "invite")
    response = await client.delete(f"{url}/{created['id']}", headers=org_a.auth())
    assert response.status_code == 204
    assert (await client.get(url, headers=org_a.auth())).json()["items"] == []
    assert (await accept(client, user["session_token"], token)).status_code == 404
    # Invited again: a new link; then it expires before use.
    await invite(client, org_a, user["email"])
    token = await mailbox.token(user["email"], "invite")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE invitations SET expires_at = now() - interval '1 second' "
            "WHERE org_id = %s AND accepted_at IS NULL",
            (org_a.org_id,),
        )
    assert (await accept(client, user["session_token"], token)).status_code == 404
    assert user["email"] not in await member_emails(client, org_a)


async def test_an_admin_cannot_invite_or_revoke_an_owner(client, org_a: Tenant):
    admin = await org_a.key("admin")
    response = await invite(client, org_a, "boss@example.com", "owner", token=admin)
    assert response.status_code == 403
    owners = await invite(client, org_a, "boss@example.com", "owner")
    assert owners.status_code == 201
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/invitations/{owners.json()['id']}", headers=org_a.auth(admin)
    )
    assert response.status_code == 403


async def test_inviting_a_member_is_a_conflict(client, org_a: Tenant):
    response = await invite(client, org_a, org_a.email)
    assert response.status_code == 409


async def test_reinviting_replaces_the_old_link(client, org_a: Tenant, mailbox: Mailbox):
    user = await signup(client, name="Eve")
    await mailbox.verify(client, user["email"], user["session_token"])
    await invite(client, org_a, user["email"])
    first = await mailbox.token(user["email"], "invite")
    await invite(client, org_a, user["email"], "contributor")
    second = await mailbox.token(user["email"], "invite")
    assert first != second
    assert (await accept(client, user["session_token"], first)).status_code == 404
    response = await accept(client, user["session_token"], second)
    assert response.json()["role"] == "contributor"


async def test_an_admin_cannot_replace_an_owners_invitation(client, org_a: Tenant, mailbox):
    owners = await invite(client, org_a, "heir@example.com", "owner")
    assert owners.status_code == 201
    admin = await org_a.key("admin")
    # Inviting the same address again would replace the owner invitation (and its link).
    response = await invite(client, org_a, "heir@example.com", "reader", token=admin)
    assert response.status_code == 403
    listed = await client.get(f"/api/orgs/{org_a.org_id}/invitations", headers=org_a.auth())
    assert [(i["email"], i["role"]) for i in listed.json()["items"]] == [
        ("heir@example.com", "owner")
    ]


async def test_verification_mail_requests_are_limited(client, mailbox):
    user = await signup(client, name="Spam")
    statuses = [
        (
            await client.post(
                "/api/auth/verify/resend",
                headers={"Authorization": f"Bearer {user['session_token']}"},
            )
        ).status_code
        for _ in range(7)
    ]
    assert statuses[:5] == [202] * 5
    assert statuses[-1] == 429
