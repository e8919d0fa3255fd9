"""The principal cache (app/auth/principal.py): a credential's look-up is reused for a few
seconds, and revoking a key, logging out, removing a member or changing what a credential may
do takes effect at once in the process that made the change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from app.auth.principal import AuthKind, Principal, PrincipalCache, forget_principals, principals
from tests.app.conftest import Tenant


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_key(client, org: Tenant, role: str = "reader") -> tuple[str, str]:
    response = await client.post(
        f"/api/orgs/{org.org_id}/api-keys", json={"name": "bot", "role": role}, headers=org.auth()
    )
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


async def test_a_cached_key_is_used_without_a_look_up(client, org_a: Tenant, database_url):
    key, key_id = await make_key(client, org_a)
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 200
    # Revoked behind the app's back (another host, psql): still served from this process's
    # cache, for at most PRINCIPAL_TTL_SECONDS; this is the bound for other processes.
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 200
    principals.invalidate()
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 401


async def test_a_revoked_key_is_refused_at_once(client, org_a: Tenant):
    key, key_id = await make_key(client, org_a)
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 200
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/api-keys/{key_id}", headers=org_a.auth()
    )
    assert response.status_code == 204
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 401


async def test_a_logged_out_session_is_refused_at_once(client, org_a: Tenant):
    _user_id, session = await org_a.member("reader")
    headers = {**bearer(session), "X-Record-Org": org_a.org_id}
    assert (await client.get("/api/recordings", headers=headers)).status_code == 200
    assert (await client.post("/api/auth/logout", headers=headers)).status_code == 204
    assert (await client.get("/api/recordings", headers=headers)).status_code == 401


async def test_a_removed_members_key_is_refused_at_once(client, org_a: Tenant):
    user_id, session = await org_a.member("admin")
    response = await client.post(
        f"/api/orgs/{org_a.org_id}/api-keys",
        json={"name": "bot", "role": "reader"},
        headers={**bearer(session), "X-Record-Org": org_a.org_id},
    )
    key = response.json()["key"]
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 200
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/members/{user_id}", headers=org_a.auth()
    )
    assert response.status_code == 204
    assert (await client.get("/api/recordings", headers=bearer(key))).status_code == 401


def principal() -> Principal:
    return Principal(kind=AuthKind.api_key, user_id=uuid.uuid4(), org_id=uuid.uuid4())


def test_a_look_up_that_raced_an_invalidation_is_not_kept():
    cache = PrincipalCache(ttl=60)
    generation = cache.generation  # read before the query, as _identify does
    cache.invalidate()  # a revocation (or its commit) meanwhile
    cache.put(b"d", principal(), generation=generation)
    assert cache.get(b"d") is None
    cache.put(b"d", principal(), generation=cache.generation)
    assert cache.get(b"d") is not None


def test_entries_expire_and_never_outlive_a_session():
    cache = PrincipalCache(ttl=0.0)
    cache.put(b"d", principal(), generation=cache.generation)
    assert cache.get(b"d") is None
    cache = PrincipalCache(ttl=60)
    ended = datetime.now(UTC) - timedelta(seconds=1)
    cache.put(b"d", principal(), generation=cache.generation, valid_until=ended)
    assert cache.get(b"d") is None


async def test_forgetting_runs_again_when_the_transaction_ends(app):
    db = app.state.services.db
    async with db.transaction() as conn:
        forget_principals(conn)
        generation = principals.generation
    assert principals.generation == generation + 1
