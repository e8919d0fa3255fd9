"""OIDC bearer tokens, verified against a JWKS. The identity provider is outside: its JWKS
endpoint is served by an httpx mock transport; everything on our side is real."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
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


async def test_oidc_token_with_org_and_role_claims(client, idp, org_a: Tenant, org_b: Tenant):
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
    token = idp.token(record_org=org_a.org_id, record_role="reader", **claims)
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert detail in response.json()["detail"]


async def test_oidc_token_signed_by_unknown_key_is_401(client, idp, org_a: Tenant):
    forger = IdentityProvider()
    token = forger.token(record_org=org_a.org_id, record_role="owner")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_oidc_token_for_unknown_org_or_bad_role(client, idp):
    token = idp.token(record_org=str(uuid.uuid4()), record_role="reader")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    token = idp.token(record_org=str(uuid.uuid4()), record_role="emperor")
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_oidc_links_only_verified_email(client, idp, org_a: Tenant):
    token = idp.token(
        sub="other-sub",
        email=org_a.email,
        email_verified=False,
        record_org=org_a.org_id,
        record_role="reader",
    )
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    token = idp.token(sub="other-sub", email=org_a.email, email_verified=True)
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["user"]["id"] == org_a.user_id


async def test_jwt_refused_when_oidc_not_configured(client, org_a: Tenant):
    token = IdentityProvider().token()
    response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "not accepted" in response.json()["detail"]
