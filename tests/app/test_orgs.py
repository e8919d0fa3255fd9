"""Orgs, members, API keys and the roles table, across two orgs."""

from __future__ import annotations

import pytest

from tests.app.conftest import Tenant

ROLES = ["owner", "admin", "contributor", "reader"]


async def test_org_crud_and_other_org_is_404(client, org_a: Tenant, org_b: Tenant):
    response = await client.get(f"/api/orgs/{org_a.org_id}", headers=org_a.auth())
    assert response.status_code == 200
    assert response.json()["name"] == "Org A"

    response = await client.patch(
        f"/api/orgs/{org_a.org_id}", json={"name": "Org A2"}, headers=org_a.auth()
    )
    assert response.json()["name"] == "Org A2"

    for method, suffix, body in [
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("DELETE", "", None),
        ("GET", "/members", None),
        ("POST", "/members", {"email": "z@example.com", "role": "reader"}),
        ("PATCH", f"/members/{org_b.user_id}", {"role": "reader"}),
        ("DELETE", f"/members/{org_b.user_id}", None),
        ("GET", "/api-keys", None),
        ("POST", "/api-keys", {"name": "k", "role": "reader"}),
    ]:
        response = await client.request(
            method, f"/api/orgs/{org_b.org_id}{suffix}", json=body, headers=org_a.auth()
        )
        assert response.status_code == 404, (method, suffix, response.text)
        # A session of org A's owner asking for org B: not a member, also 404.
        response = await client.request(
            method,
            f"/api/orgs/{org_b.org_id}{suffix}",
            json=body,
            headers={"Authorization": f"Bearer {org_a.session}"},
        )
        assert response.status_code == 404, (method, suffix, response.text)
    # Nothing changed in org B.
    response = await client.get(f"/api/orgs/{org_b.org_id}/members", headers=org_b.auth())
    assert [m["user_id"] for m in response.json()["items"]] == [org_b.user_id]


async def test_revoking_another_orgs_key_is_404(client, org_a: Tenant, org_b: Tenant):
    response = await client.get(f"/api/orgs/{org_b.org_id}/api-keys", headers=org_b.auth())
    key_id = response.json()["items"][0]["id"]
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/api-keys/{key_id}", headers=org_a.auth()
    )
    assert response.status_code == 404
    assert (await client.get("/api/recordings", headers=org_b.auth())).status_code == 200


async def test_create_org_with_session_and_not_with_key(client, org_a: Tenant):
    response = await client.post(
        "/api/orgs", json={"name": "Second"}, headers={"Authorization": f"Bearer {org_a.session}"}
    )
    assert response.status_code == 201
    second = response.json()["id"]
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {org_a.session}"})
    assert {o["id"] for o in me.json()["orgs"]} == {org_a.org_id, second}
    # Two orgs: a session must now say which one.
    response = await client.get(
        "/api/recordings", headers={"Authorization": f"Bearer {org_a.session}"}
    )
    assert response.status_code == 400
    assert "X-Record-Org" in response.json()["detail"]
    response = await client.get(
        "/api/recordings",
        headers={"Authorization": f"Bearer {org_a.session}", "X-Record-Org": second},
    )
    assert response.status_code == 200

    response = await client.post("/api/orgs", json={"name": "Nope"}, headers=org_a.auth())
    assert response.status_code == 403


@pytest.mark.parametrize("role", ["contributor", "reader"])
async def test_low_roles_cannot_manage_members_or_keys(client, org_a: Tenant, role: str):
    key = await org_a.key(role)
    headers = org_a.auth(key)
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/api-keys",
        json={"name": "x", "role": "reader"},
        headers=headers,
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/members",
        json={"email": "n@example.com", "role": "reader"},
        headers=headers,
    )
    assert response.status_code == 403
    response = await client.get(f"/api/orgs/{org_a.org_id}/api-keys", headers=headers)
    assert response.status_code == 403
    response = await client.patch(
        f"/api/orgs/{org_a.org_id}", json={"name": "mine"}, headers=headers
    )
    assert response.status_code == 403
    # Reading the org and its members is everyone's.
    assert (await client.get(f"/api/orgs/{org_a.org_id}", headers=headers)).status_code == 200
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=headers)
    assert members.status_code == 200


async def test_admin_limits(client, org_a: Tenant):
    admin_key = await org_a.key("admin")
    headers = org_a.auth(admin_key)
    for role in ("owner", "admin"):
        response = await client.post(
            f"/api/orgs/{org_a.org_id}/members",
            json={"email": f"{role}@example.com", "role": role},
            headers=headers,
        )
        assert response.status_code == 403, role
        response = await client.post(
            f"/api/orgs/{org_a.org_id}/api-keys",
            json={"name": "x", "role": role},
            headers=headers,
        )
        assert response.status_code == 403, role
    # An admin can't demote or remove the owner either.
    response = await client.patch(
        f"/api/orgs/{org_a.org_id}/members/{org_a.user_id}",
        json={"role": "reader"},
        headers=headers,
    )
    assert response.status_code == 403
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/members/{org_a.user_id}", headers=headers
    )
    assert response.status_code == 403
    # ...and can't delete the org.
    assert (await client.delete(f"/api/orgs/{org_a.org_id}", headers=headers)).status_code == 403
    # But can add contributors and readers.
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/api-keys",
        json={"name": "ok", "role": "reader"},
        headers=headers,
    )
    assert response.status_code == 201


async def test_last_owner_cannot_leave_or_be_demoted(client, org_a: Tenant):
    url = f"/api/orgs/{org_a.org_id}/members/{org_a.user_id}"
    response = await client.patch(url, json={"role": "admin"}, headers=org_a.auth())
    assert response.status_code == 409
    response = await client.delete(url, headers=org_a.session_auth())
    assert response.status_code == 409
    # With a second owner, the first may step down.
    second_id, second = await org_a.member("owner")
    response = await client.patch(url, json={"role": "admin"}, headers=org_a.auth())
    assert response.status_code == 200
    assert response.json()["role"] == "admin"
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/members/{second_id}",
        headers={"Authorization": f"Bearer {second}", "X-Record-Org": org_a.org_id},
    )
    assert response.status_code == 409  # now the last owner
    # The first owner's owner key now acts as an admin, as its maker does.
    response = await client.patch(
        f"/api/orgs/{org_a.org_id}/members/{second_id}",
        json={"role": "admin"},
        headers=org_a.auth(),
    )
    assert response.status_code == 403


async def test_invite_then_signup_then_accept_joins_org(client, org_a: Tenant, mailbox):
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/members",
        json={"email": "later@example.com", "role": "contributor"},
        headers=org_a.auth(),
    )
    assert response.status_code == 201
    response = await client.post(
        "/api/auth/signup",
        json={
            "email": "Later@example.com",
            "password": "plum-tide-orbit-velvet-42",
            "name": "Later",
        },
    )
    assert response.status_code == 201
    assert response.json()["org"]["id"] != org_a.org_id  # signing up claims no invitation
    session = response.json()["session_token"]
    await mailbox.verify(client, "Later@example.com", session)
    token = await mailbox.token("later@example.com", "invite")
    accepted = await client.post(
        "/api/invitations/accept",
        json={"token": token},
        headers={"Authorization": f"Bearer {session}"},
    )
    assert accepted.status_code == 200, accepted.text
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    by_email = {m["email"].lower(): m for m in members.json()["items"]}
    assert by_email["later@example.com"]["role"] == "contributor"
    assert by_email["later@example.com"]["status"] == "active"


async def test_member_lifecycle_and_audit(client, org_a: Tenant, settings):
    uid, token = await org_a.member("reader")
    url = f"/api/orgs/{org_a.org_id}/members"
    email = next(
        m["email"]
        for m in (await client.get(url, headers=org_a.auth())).json()["items"]
        if m["user_id"] == uid
    )
    again = await client.post(url, json={"email": email, "role": "reader"}, headers=org_a.auth())
    assert again.status_code == 409
    response = await client.patch(
        f"{url}/{uid}", json={"role": "contributor"}, headers=org_a.auth()
    )
    assert response.json()["role"] == "contributor"
    # The member's own key dies with their membership.
    session = {"Authorization": f"Bearer {token}", "X-Record-Org": org_a.org_id}
    response = await client.patch(f"{url}/{uid}", json={"role": "admin"}, headers=org_a.auth())
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/api-keys",
        json={"name": "bea", "role": "reader"},
        headers=session,
    )
    assert response.status_code == 201
    bea_key = response.json()["key"]
    assert (await client.delete(f"{url}/{uid}", headers=org_a.auth())).status_code == 204
    assert (await client.get("/api/recordings", headers=org_a.auth(bea_key))).status_code == 401
    assert (await client.get(f"/api/orgs/{org_a.org_id}", headers=session)).status_code == 404

    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT action FROM audit_log WHERE org_id = %s ORDER BY id", (org_a.org_id,)
            )
        ]
    assert actions == [
        "api_key.create",
        "member.invite",
        "member.join",
        "member.role_change",
        "member.role_change",
        "api_key.create",
        "member.remove",
    ]


async def test_member_can_leave(client, org_a: Tenant):
    uid, session = await org_a.member("reader")
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/members/{uid}",
        headers={"Authorization": f"Bearer {session}", "X-Record-Org": org_a.org_id},
    )
    assert response.status_code == 204


async def test_api_keys_list_revoke_and_shown_once(client, org_a: Tenant):
    url = f"/api/orgs/{org_a.org_id}/api-keys"
    created = await client.post(url, json={"name": "ci", "role": "reader"}, headers=org_a.auth())
    body = created.json()
    assert body["key"].startswith("rk_")
    assert body["prefix"] == body["key"][:10]
    listed = (await client.get(url, headers=org_a.auth())).json()["items"]
    assert all("key" not in item for item in listed)
    ci = next(item for item in listed if item["id"] == body["id"])
    assert ci["last_used_at"] is None
    assert (await client.get("/api/recordings", headers=org_a.auth(body["key"]))).status_code == 200
    listed = (await client.get(url, headers=org_a.auth())).json()["items"]
    assert next(i for i in listed if i["id"] == body["id"])["last_used_at"] is not None
    assert (await client.delete(f"{url}/{body['id']}", headers=org_a.auth())).status_code == 204
    assert (await client.delete(f"{url}/{body['id']}", headers=org_a.auth())).status_code == 404
    response = await client.get("/api/recordings", headers=org_a.auth(body["key"]))
    assert response.status_code == 401


async def test_owner_deletes_org(client, org_a: Tenant, org_b: Tenant):
    response = await client.delete(f"/api/orgs/{org_a.org_id}", headers=org_a.auth())
    assert response.status_code == 204
    assert (await client.get("/api/recordings", headers=org_a.auth())).status_code == 401
    assert (await client.get("/api/recordings", headers=org_b.auth())).status_code == 200
