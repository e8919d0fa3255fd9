"""SQL for orgs, memberships, invitations and API keys. RLS scopes every statement."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from psycopg.rows import DictRow

from app.auth.rbac import Role
from app.kit.db import Conn, execute, fetch_all, fetch_one


async def insert_org(conn: Conn, *, org_id: UUID, name: str) -> DictRow:
    row = await fetch_one(
        conn,
        "INSERT INTO orgs (id, name) VALUES (%s, %s) RETURNING id, name, created_at",
        (org_id, name),
    )
    assert row is not None
    return row


async def get_org(conn: Conn, org_id: UUID) -> DictRow | None:
    return await fetch_one(conn, "SELECT id, name, created_at FROM orgs WHERE id = %s", (org_id,))


async def rename_org(conn: Conn, org_id: UUID, name: str) -> DictRow | None:
    return await fetch_one(
        conn,
        "UPDATE orgs SET name = %s, updated_at = now() WHERE id = %s "
        "RETURNING id, name, created_at",
        (name, org_id),
    )


async def delete_org(conn: Conn, org_id: UUID) -> int:
    return await execute(conn, "DELETE FROM orgs WHERE id = %s", (org_id,))


async def upsert_membership(conn: Conn, *, org_id: UUID, user_id: UUID, role: Role) -> None:
    await execute(
        conn,
        """
        INSERT INTO memberships (org_id, user_id, role) VALUES (%s, %s, %s)
        ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role
         WHERE memberships.role IS DISTINCT FROM excluded.role
        """,
        (org_id, user_id, role.value),
    )


async def list_members(conn: Conn, org_id: UUID) -> list[DictRow]:
    return await fetch_all(
        conn,
        """
        SELECT m.user_id, u.email, u.name, m.role, m.created_at
          FROM memberships AS m JOIN users AS u ON u.id = m.user_id
         WHERE m.org_id = %s ORDER BY m.created_at, m.user_id
        """,
        (org_id,),
    )


async def list_invitations(conn: Conn, org_id: UUID) -> list[DictRow]:
    """Open invitations (not accepted; a revoked one is deleted), expired ones included."""
    return await fetch_all(
        conn,
        """
        SELECT id, email, role, invited_by, created_at, expires_at FROM invitations
         WHERE org_id = %s AND accepted_at IS NULL
         ORDER BY created_at, id
        """,
        (org_id,),
    )


async def get_open_invitation(conn: Conn, org_id: UUID, invitation_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        """
        SELECT id, email, role, invited_by, created_at, expires_at FROM invitations
         WHERE org_id = %s AND id = %s AND accepted_at IS NULL
        """,
        (org_id, invitation_id),
    )


async def open_invitation_by_email(conn: Conn, org_id: UUID, email: str) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT id, role FROM invitations WHERE org_id = %s AND lower(email) = lower(%s) "
        "AND accepted_at IS NULL",
        (org_id, email),
    )


async def revoke_invitation(conn: Conn, org_id: UUID, invitation_id: UUID) -> int:
    """Revoked is gone (its token with it); the audit log keeps who revoked what."""
    return await execute(
        conn,
        "DELETE FROM invitations WHERE org_id = %s AND id = %s AND accepted_at IS NULL",
        (org_id, invitation_id),
    )


async def set_invitation_token(
    conn: Conn, org_id: UUID, invitation_id: UUID, digest: bytes
) -> DictRow | None:
    """Give a still-open invitation its (new) token; returns it, or None if it ended."""
    invitation = await fetch_one(
        conn,
        """
        SELECT id, email, role, invited_by, created_at, expires_at FROM invitations
         WHERE org_id = %s AND id = %s AND accepted_at IS NULL AND expires_at > now()
           FOR UPDATE
        """,
        (org_id, invitation_id),
    )
    if invitation is None:
        return None
    await execute(
        conn,
        """
        INSERT INTO invitation_tokens (invitation_id, org_id, token_hash) VALUES (%s, %s, %s)
        ON CONFLICT (invitation_id) DO UPDATE
            SET token_hash = excluded.token_hash, created_at = now()
        """,
        (invitation_id, org_id, digest),
    )
    return invitation


async def find_invitation_by_token(conn: Conn, digest: bytes) -> DictRow | None:
    """Before the org is known: an open, unexpired invitation by its token's hash."""
    return await fetch_one(
        conn, "SELECT id, org_id, email, role FROM app_find_invitation(%s)", (digest,)
    )


async def accept_invitation(
    conn: Conn, *, org_id: UUID, invitation_id: UUID, digest: bytes, user_id: UUID
) -> DictRow | None:
    """Single use: only one request can turn an open invitation into accepted (the row lock
    makes a second one wait, then find it accepted); its token is deleted with it."""
    accepted = await fetch_one(
        conn,
        """
        UPDATE invitations AS i SET accepted_at = now(), accepted_by = %s
         WHERE i.org_id = %s AND i.id = %s AND i.accepted_at IS NULL AND i.expires_at > now()
           AND EXISTS (
               SELECT FROM invitation_tokens AS t
                WHERE t.invitation_id = i.id AND t.token_hash = %s
           )
        RETURNING i.id, i.role
        """,
        (user_id, org_id, invitation_id, digest),
    )
    if accepted is not None:
        await execute(
            conn, "DELETE FROM invitation_tokens WHERE invitation_id = %s", (invitation_id,)
        )
    return accepted


async def member_by_email(conn: Conn, org_id: UUID, email: str) -> DictRow | None:
    return await fetch_one(
        conn,
        """
        SELECT m.user_id FROM memberships AS m JOIN users AS u ON u.id = m.user_id
         WHERE m.org_id = %s AND lower(u.email) = lower(%s)
        """,
        (org_id, email),
    )


async def get_oidc_binding(conn: Conn, org_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT issuer, claim_value, max_role, created_by, created_at, updated_at "
        "FROM org_oidc_bindings WHERE org_id = %s",
        (org_id,),
    )


async def put_oidc_binding(
    conn: Conn, *, org_id: UUID, issuer: str, claim_value: str, max_role: Role, user_id: UUID | None
) -> DictRow:
    row = await fetch_one(
        conn,
        """
        INSERT INTO org_oidc_bindings (org_id, issuer, claim_value, max_role, created_by)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (org_id) DO UPDATE SET issuer = excluded.issuer,
            claim_value = excluded.claim_value, max_role = excluded.max_role, updated_at = now()
        RETURNING issuer, claim_value, max_role, created_by, created_at, updated_at
        """,
        (org_id, issuer, claim_value, max_role.value, user_id),
    )
    assert row is not None
    return row


async def delete_oidc_binding(conn: Conn, org_id: UUID) -> int:
    return await execute(conn, "DELETE FROM org_oidc_bindings WHERE org_id = %s", (org_id,))


async def get_member(conn: Conn, org_id: UUID, user_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        """
        SELECT m.user_id, u.email, u.name, m.role, m.created_at
          FROM memberships AS m JOIN users AS u ON u.id = m.user_id
         WHERE m.org_id = %s AND m.user_id = %s
        """,
        (org_id, user_id),
    )


async def lock_owners(conn: Conn, org_id: UUID) -> list[UUID]:
    """The org's owners, locked: concurrent demotions of two owners cannot both succeed."""
    rows = await fetch_all(
        conn,
        "SELECT user_id FROM memberships WHERE org_id = %s AND role = 'owner' FOR UPDATE",
        (org_id,),
    )
    return [row["user_id"] for row in rows]


async def set_member_role(conn: Conn, org_id: UUID, user_id: UUID, role: Role) -> int:
    return await execute(
        conn,
        "UPDATE memberships SET role = %s WHERE org_id = %s AND user_id = %s",
        (role.value, org_id, user_id),
    )


async def delete_member(conn: Conn, org_id: UUID, user_id: UUID) -> int:
    return await execute(
        conn, "DELETE FROM memberships WHERE org_id = %s AND user_id = %s", (org_id, user_id)
    )


async def insert_invitation(
    conn: Conn,
    *,
    invitation_id: UUID,
    org_id: UUID,
    email: str,
    role: Role,
    invited_by: UUID | None,
    expires_at: datetime,
) -> DictRow:
    """A new invitation, or a fresh start for the open one to the same address (its old link
    stops working: the token is mailed anew)."""
    row = await fetch_one(
        conn,
        """
        INSERT INTO invitations (id, org_id, email, role, invited_by, expires_at)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (org_id, lower(email)) WHERE accepted_at IS NULL
        DO UPDATE SET role = excluded.role, invited_by = excluded.invited_by,
            expires_at = excluded.expires_at, created_at = now()
        RETURNING id, email, role, invited_by, created_at, expires_at
        """,
        (invitation_id, org_id, email, role.value, invited_by, expires_at),
    )
    assert row is not None
    # A fresh start: the link mailed before stops working; the job mails a new one.
    await execute(conn, "DELETE FROM invitation_tokens WHERE invitation_id = %s", (row["id"],))
    return row


async def insert_api_key(
    conn: Conn,
    *,
    key_id: UUID,
    org_id: UUID,
    name: str,
    prefix: str,
    digest: bytes,
    role: Role,
    created_by: UUID | None,
) -> DictRow:
    row = await fetch_one(
        conn,
        """
        INSERT INTO api_keys (id, org_id, name, prefix, key_hash, role, created_by)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        RETURNING id, name, prefix, role, created_by, created_at, last_used_at
        """,
        (key_id, org_id, name, prefix, digest, role.value, created_by),
    )
    assert row is not None
    return row


async def list_api_keys(conn: Conn, org_id: UUID) -> list[DictRow]:
    return await fetch_all(
        conn,
        """
        SELECT id, name, prefix, role, created_by, created_at, last_used_at FROM api_keys
         WHERE org_id = %s AND revoked_at IS NULL ORDER BY created_at DESC, id
        """,
        (org_id,),
    )


async def get_api_key(conn: Conn, org_id: UUID, key_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT id, role FROM api_keys WHERE org_id = %s AND id = %s AND revoked_at IS NULL",
        (org_id, key_id),
    )


async def revoke_api_key(conn: Conn, org_id: UUID, key_id: UUID) -> int:
    return await execute(
        conn,
        "UPDATE api_keys SET revoked_at = now() WHERE org_id = %s AND id = %s "
        "AND revoked_at IS NULL",
        (org_id, key_id),
    )


async def revoke_member_keys(conn: Conn, org_id: UUID, user_id: UUID) -> int:
    return await execute(
        conn,
        "UPDATE api_keys SET revoked_at = now() WHERE org_id = %s AND created_by = %s "
        "AND revoked_at IS NULL",
        (org_id, user_id),
    )
