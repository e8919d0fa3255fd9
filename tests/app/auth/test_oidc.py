"""OIDC bearer tokens, verified against a JWKS. The identity provider is outside: its JWKS
endpoint is served by an httpx mock transport; everything on our side is real."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth.oidc import OidcVerifier
from tests.app.conftest import Tenant

ISSUER = "https://idp.example.com/"
AUDIENCE = "record-api"


class IdentityProvider:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "key-1"
        self.fetches = 0

    def jwks(self) -> dict:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        return httpx.Response(200, json=self.jwks())

    def token(self, **claims) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-42",
            "iat": now,
            "exp": now + 300,
            "email": "oidc.person@example.com",
            "email_verified": True,
            "name": "Oidc Person",
            **claims,
        }
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def idp(app) -> IdentityProvider:
    provider = IdentityProvider()
    services = app.state.services
    services.settings = services.settings.model_copy(
        update={
            "oidc_jwks_url": "https://idp.example.com/jwks",
            "oidc_issuer": ISSUER,
            "oidc_audience": AUDIENCE,
        }
    )
    services.extras["oidc"] = OidcVerifier(
        services.settings, http=httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
    )
    return provider


async def bind(client, tenant: Tenant, max_role: str = "admin", issuer: str = ISSUER):
    """Bind the provider to the org: its org claim then carries the org's id."""
    response = await client.put(
        f"/api/orgs/{tenant.org_id}/oidc-binding",
        json={"issuer": issuer, "max_role": max_role},
        headers=tenant.auth(),
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_oidc_token_with_org_and_role_claims(client, idp, org_a: Tenant, org_b: Tenant):
    await bind(client, org_a)
    token = idp.token(record_org=org_a.org_id, record_role="contributor")
    headers = {"Authorization": f"Bearer {token}"}
    me = await client.get("/api/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json()["auth"] == "oidc"
    assert me.json()["org"] == {"id": org_a.org_id, "name": "Org A", "role": "contributor"}
    assert (await client.get("/api/recordings", headers=headers)).status_code == 200
    # The claims decide the role: a contributor cannot manage keys.
    response = await client.get(f"/api/orgs/{org_a.org_id}/api-keys", headers=headers)
    assert response.status_code == 403
    # The membership row follows the claims, so the member list is true.
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    emails = {m["email"]: m["role"] for m in members.json()["items"]}
    assert emails["oidc.person@example.com"] == "contributor"
    # Another org than the token's: 404.
    other = {**headers, "X-Record-Org": org_b.org_id}
    assert (await client.get("/api/recordings", headers=other)).status_code == 404
    # The same subject again is the same user; keys were fetched once.
    again = await client.get("/api/me", headers=headers)
    assert again.json()["user"]["id"] == me.json()["user"]["id"]
    assert idp.fetches == 1


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "someone-else"}, "refused"),
        ({"iss": "https://evil.example.com/"}, "refused"),
    ],
)
async def test_oidc_bad_claims_are_401(client, idp, org_a: Tenant, claims, detail):
    await bind(client, org_a)
    token = idp.token(record_org=org_a.org_id, record_role="reader", **claims)
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert detail in response.json()["detail"]


async def test_oidc_token_signed_by_unknown_key_is_401(client, idp, org_a: Tenant):
    forger = IdentityProvider()
    token = forger.token(record_org=org_a.org_id, record_role="owner")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_oidc_token_for_unknown_org_or_bad_role(client, idp, org_a: Tenant):
    token = idp.token(record_org=str(uuid.uuid4()), record_role="reader")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    await bind(client, org_a)
    token = idp.token(record_org=org_a.org_id, record_role="emperor")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_oidc_links_only_verified_email_to_a_verified_account(
    client, idp, org_a: Tenant, mailbox
):
    await bind(client, org_a)
    token = idp.token(
        sub="other-sub",
        email=org_a.email,
        email_verified=False,
        record_org=org_a.org_id,
        record_role="reader",
    )
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    # The provider verified the address, but the local account never proved it: a squatter's
    # account would otherwise receive the identity.
    token = idp.token(sub="other-sub", email=org_a.email, email_verified=True)
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "verified" in response.json()["detail"]
    await mailbox.verify(client, org_a.email, org_a.session)
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["user"]["id"] == org_a.user_id


async def test_jwt_refused_when_oidc_not_configured(client, org_a: Tenant):
    token = IdentityProvider().token()
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "not accepted" in response.json()["detail"]


# Finding 3: "false" is a string, and bool("false") is True.
@pytest.mark.parametrize("value", ["false", "true", 1, "yes", None])
async def test_only_a_json_true_verifies_an_email(idp, app, value):
    verifier = app.state.services.extras["oidc"]
    identity = await verifier.verify(idp.token(email_verified=value))
    assert identity.email_verified is False
    assert (await verifier.verify(idp.token(email_verified=True))).email_verified is True


async def test_string_false_links_no_account(client, idp, org_a: Tenant, mailbox):
    await mailbox.verify(client, org_a.email, org_a.session)
    token = idp.token(sub="attacker", email=org_a.email, email_verified="false")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


# Finding 4: org and role claims bind to an org only through its owner's binding.
async def test_a_token_naming_an_org_id_gets_nothing_without_a_binding(client, idp, org_a: Tenant):
    # Before: any token of the configured provider could name any org's id and any role.
    token = idp.token(
        sub="outsider", email="outsider@example.com", record_org=org_a.org_id, record_role="owner"
    )
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    assert "outsider@example.com" not in {m["email"] for m in members.json()["items"]}


async def test_a_binding_is_per_issuer_and_names_its_own_org(
    client, idp, org_a: Tenant, org_b: Tenant
):
    await bind(client, org_a, issuer="https://other-idp.example.com/")
    token = idp.token(
        sub="p1", email="p1@example.com", record_org=org_a.org_id, record_role="reader"
    )
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401  # bound to another issuer
    await bind(client, org_a)
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["org"]["id"] == org_a.org_id


@pytest.mark.parametrize("value", ["acme", "ORG-A"])
async def test_no_org_can_bind_a_value_first(client, idp, org_a: Tenant, org_b: Tenant, value):
    """The attack: org B's owner binds a value before org A does ("acme", or A's id), and the
    provider's people who carry it land in org B. A binding names its own org's id only."""
    value = org_a.org_id if value == "ORG-A" else value
    response = await client.put(
        f"/api/orgs/{org_b.org_id}/oidc-binding",
        json={"issuer": ISSUER, "claim_value": value},
        headers=org_b.auth(),
    )
    assert response.status_code == 400
    assert org_b.org_id in response.json()["detail"]
    await bind(client, org_a)
    token = idp.token(
        sub="p9", email="p9@example.com", record_org=org_a.org_id, record_role="reader"
    )
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["org"]["id"] == org_a.org_id


async def test_claimed_roles_obey_the_binding_and_the_last_owner_rule(
    client, idp, org_a: Tenant, database_url
):
    await bind(client, org_a, max_role="admin")
    over = idp.token(sub="p2", email="p2@example.com", record_org=org_a.org_id, record_role="owner")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {over}"})
    assert response.status_code == 401
    assert "at most the admin role" in response.json()["detail"]
    await bind(client, org_a, max_role="owner")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {over}"})
    assert response.status_code == 200
    user_id = response.json()["user"]["id"]
    # The original owner leaves, so the provider's owner is the last one: it cannot demote them.
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/members/{org_a.user_id}", headers=org_a.session_auth()
    )
    assert response.status_code == 204, response.text
    demote = idp.token(
        sub="p2", email="p2@example.com", record_org=org_a.org_id, record_role="reader"
    )
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {demote}"})
    assert response.status_code == 409
    with psycopg.connect(database_url) as conn:
        role = conn.execute(
            "SELECT role FROM memberships WHERE org_id = %s AND user_id = %s",
            (org_a.org_id, user_id),
        ).fetchone()
        audited = conn.execute(
            "SELECT action, data->>'source', data->>'new' FROM audit_log WHERE org_id = %s "
            "AND target_id = %s ORDER BY id",
            (org_a.org_id, user_id),
        ).fetchall()
        binding_audit = conn.execute(
            "SELECT count(*) FROM audit_log WHERE org_id = %s AND action = 'oidc_binding.set'",
            (org_a.org_id,),
        ).fetchone()
    assert role == ("owner",)
    assert audited == [("member.add", "oidc", "owner")]
    assert binding_audit == (2,)


async def test_only_owners_bind_an_identity_provider(client, org_a: Tenant, org_b: Tenant):
    admin_key = await org_a.key("admin")
    body = {"issuer": ISSUER, "max_role": "reader"}
    url = f"/api/orgs/{org_a.org_id}/oidc-binding"
    response = await client.put(url, json=body, headers=org_a.auth(admin_key))
    assert response.status_code == 403
    # Another org's owner: 404, and neither can read or delete it.
    response = await client.put(url, json=body, headers=org_b.auth())
    assert response.status_code == 404
    assert (await client.get(url, headers=org_a.auth())).status_code == 404
    assert (await client.put(url, json=body, headers=org_a.auth())).status_code == 200
    assert (await client.get(url, headers=org_b.auth())).status_code == 404
    assert (await client.delete(url, headers=org_b.auth())).status_code == 404
    got = await client.get(url, headers=org_a.auth())
    assert got.json()["claim_value"] == org_a.org_id
    assert (await client.delete(url, headers=org_a.auth())).status_code == 204
    assert (await client.get(url, headers=org_a.auth())).status_code == 404


async def test_a_capped_provider_cannot_touch_a_role_above_its_cap(
    client, idp, org_a: Tenant, mailbox
):
    await bind(client, org_a, max_role="admin")
    # An owner of the org, already known to the provider, signs in with a reader claim.
    await mailbox.verify(client, org_a.email, org_a.session)
    token = idp.token(
        sub="owner-sub", email=org_a.email, record_org=org_a.org_id, record_role="reader"
    )
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["org"]["role"] == "owner"
    members = await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    assert {m["email"]: m["role"] for m in members.json()["items"]}[org_a.email] == "owner"


async def test_a_provider_demoting_to_reader_ends_the_persons_links(
    client, idp, org_a: Tenant, database_url
):
    await bind(client, org_a, max_role="admin")
    headers = {"Authorization": f"Bearer {idp.token(record_org=org_a.org_id, record_role='admin')}"}
    assert (await client.get("/api/me", headers=headers)).status_code == 200
    user_id = (await client.get("/api/me", headers=headers)).json()["user"]["id"]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO shares (id, org_id, resource_type, resource_id, created_by) "
            "VALUES (%s, %s, 'conversation', %s, %s)",
            ("s" * 24, org_a.org_id, str(uuid.uuid4()), user_id),
        )
    demoted = {
        "Authorization": f"Bearer {idp.token(record_org=org_a.org_id, record_role='reader')}"
    }
    me = await client.get("/api/me", headers=demoted)
    assert me.json()["org"]["role"] == "reader"
    with psycopg.connect(database_url) as conn:
        revoked = conn.execute("SELECT revoked_at IS NOT NULL FROM shares").fetchone()
    assert revoked == (True,)
