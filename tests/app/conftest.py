"""API-level helpers: make orgs, users and keys through the API itself."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.ai.local_models import LocalModels
from tests.app.retrieval import corpus, models, seeder  # noqa: F401 - search and chat fixtures

PASSWORD = "plum-tide-orbit-velvet-42"
_n = itertools.count()


@dataclass
class Tenant:
    """An org made through the API: its owner's session and an owner API key."""

    client: httpx.AsyncClient
    org_id: str
    user_id: str
    email: str
    session: str
    owner_key: str
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.owner_key}"}

    def session_auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.session}", "X-Record-Org": self.org_id}

    async def key(self, role: str) -> str:
        """An API key of this org with ``role`` (made once, by the owner)."""
        if role not in self.keys:
            response = await self.client.post(
                f"/api/orgs/{self.org_id}/api-keys",
                json={"name": f"{role} key", "role": role},
                headers=self.auth(),
            )
            assert response.status_code == 201, response.text
            self.keys[role] = response.json()["key"]
        return self.keys[role]

    async def member(self, role: str) -> tuple[str, str]:
        """A new user who is a member with ``role``: (user_id, session token)."""
        user = await signup(self.client, name=f"{role} member")
        response = await self.client.post(
            f"/api/orgs/{self.org_id}/members",
            json={"email": user["email"], "role": role},
            headers=self.auth(),
        )
        assert response.status_code == 201, response.text
        return user["user"]["id"], user["session_token"]


async def signup(client: httpx.AsyncClient, name: str = "Ada", **extra: Any) -> dict[str, Any]:
    email = f"user{next(_n)}@example.com"
    response = await client.post(
        "/api/auth/signup", json={"email": email, "password": PASSWORD, "name": name, **extra}
    )
    assert response.status_code == 201, response.text
    return {**response.json(), "email": email}


async def make_tenant(client: httpx.AsyncClient, name: str = "Acme") -> Tenant:
    user = await signup(client, org_name=name)
    org_id = user["org"]["id"]
    headers = {"Authorization": f"Bearer {user['session_token']}", "X-Record-Org": org_id}
    response = await client.post(
        f"/api/orgs/{org_id}/api-keys",
        json={"name": "owner key", "role": "owner"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return Tenant(
        client=client,
        org_id=org_id,
        user_id=user["user"]["id"],
        email=user["email"],
        session=user["session_token"],
        owner_key=response.json()["key"],
    )


@pytest.fixture
async def org_a(client: httpx.AsyncClient) -> Tenant:
    return await make_tenant(client, "Org A")


@pytest.fixture
async def org_b(client: httpx.AsyncClient) -> Tenant:
    return await make_tenant(client, "Org B")


# The real models behind the real model server, loaded once per session (lazily: a test that
# only embeds never loads whisper).
@pytest.fixture(scope="session")
def local_models() -> LocalModels:
    return LocalModels()


@pytest.fixture(scope="session")
def model_app(local_models: LocalModels) -> object:
    from app.ai.server import create_model_app

    return create_model_app(local_models, preload=False)
