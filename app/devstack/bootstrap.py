"""The demo org of the local stack: org "demo", its owner, and an owner API key.

Runs as the database owner (not the RLS-bound application role): it is set-up, not a request.
Idempotent: a second `record up` finds the org and keeps the key dev.env already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import psycopg

from app.auth.tokens import API_KEY_PREFIX, display_prefix, new_token, token_digest
from app.kit.db import libpq_conninfo
from app.kit.ids import new_id

DEMO_ORG = "demo"
DEMO_EMAIL = "demo@record.localhost"


@dataclass(frozen=True)
class Demo:
    org_id: UUID
    user_id: UUID
    api_key: str


def ensure_demo(database_url: str, *, previous_key: str | None) -> Demo:
    with psycopg.connect(libpq_conninfo(database_url)) as conn, conn.transaction():
        row = conn.execute(
            "SELECT o.id AS org_id, m.user_id FROM orgs AS o "
            "JOIN memberships AS m ON m.org_id = o.id AND m.role = 'owner' "
            "JOIN users AS u ON u.id = m.user_id AND lower(u.email) = %s "
            "WHERE o.name = %s ORDER BY o.created_at LIMIT 1",
            (DEMO_EMAIL, DEMO_ORG),
        ).fetchone()
        if row is None:
            org_id, user_id = new_id(), new_id()
            conn.execute("INSERT INTO orgs (id, name) VALUES (%s, %s)", (org_id, DEMO_ORG))
            # No password: the demo owner signs in with the API key, or an admin sets one.
            conn.execute(
                "INSERT INTO users (id, email, name) VALUES (%s, %s, %s) "
                "ON CONFLICT (lower(email)) DO NOTHING",
                (user_id, DEMO_EMAIL, "Demo Owner"),
            )
            found = conn.execute(
                "SELECT id FROM users WHERE lower(email) = %s", (DEMO_EMAIL,)
            ).fetchone()
            assert found is not None
            user_id = found[0]
            conn.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (%s, %s, 'owner')",
                (org_id, user_id),
            )
        else:
            org_id, user_id = row
        if previous_key:
            valid = conn.execute(
                "SELECT 1 FROM api_keys WHERE key_hash = %s AND org_id = %s "
                "AND revoked_at IS NULL AND role = 'owner'",
                (token_digest(previous_key), org_id),
            ).fetchone()
            if valid:
                return Demo(org_id=org_id, user_id=user_id, api_key=previous_key)
        key = new_token(API_KEY_PREFIX)
        conn.execute(
            "INSERT INTO api_keys (id, org_id, name, prefix, key_hash, role, created_by) "
            "VALUES (%s, %s, 'local stack (dev.env)', %s, %s, 'owner', %s)",
            (new_id(), org_id, display_prefix(key), token_digest(key), user_id),
        )
        return Demo(org_id=org_id, user_id=user_id, api_key=key)
