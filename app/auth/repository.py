"""SQL for users, sessions, and the authentication look-ups (SECURITY DEFINER functions)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from psycopg.rows import DictRow

from app.kit.db import Conn, execute, fetch_all, fetch_one


async def authenticate_api_key(conn: Conn, digest: bytes) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT key_id, org_id, role, created_by FROM app_authenticate_api_key(%s)",
        (digest,),
    )


async def authenticate_session(conn: Conn, digest: bytes) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT session_id, user_id, expires_at FROM app_authenticate_session(%s)",
        (digest,),
    )


async def find_user_by_email(conn: Conn, email: str) -> DictRow | None:
    return await fetch_one(
        conn, "SELECT id, email, name, password_hash FROM app_find_user_by_email(%s)", (email,)
    )


async def find_user_by_oidc(conn: Conn, issuer: str, subject: str) -> DictRow | None:
    return await fetch_one(
        conn, "SELECT id, email, name FROM app_find_user_by_oidc(%s, %s)", (issuer, subject)
    )


async def insert_user(
    conn: Conn,
    *,
    user_id: UUID,
    email: str,
    name: str,
    password_hash: str | None,
    oidc_issuer: str | None = None,
    oidc_subject: str | None = None,
) -> DictRow:
    row = await fetch_one(
        conn,
        """
        INSERT INTO users (id, email, name, password_hash, oidc_issuer, oidc_subject)
        VALUES (%s, %s, %s, %s, %s, %s)
        RETURNING id, email, name, created_at
        """,
        (user_id, email, name, password_hash, oidc_issuer, oidc_subject),
    )
    assert row is not None
    return row


async def link_oidc(conn: Conn, *, user_id: UUID, issuer: str, subject: str) -> None:
    await execute(
        conn,
        "UPDATE users SET oidc_issuer = %s, oidc_subject = %s, updated_at = now() WHERE id = %s",
        (issuer, subject, user_id),
    )


async def update_password_hash(conn: Conn, *, user_id: UUID, password_hash: str) -> None:
    await execute(
        conn,
        "UPDATE users SET password_hash = %s, updated_at = now() WHERE id = %s",
        (password_hash, user_id),
    )


async def get_user(conn: Conn, user_id: UUID) -> DictRow | None:
    return await fetch_one(
        conn, "SELECT id, email, name, created_at FROM users WHERE id = %s", (user_id,)
    )


async def insert_session(
    conn: Conn, *, session_id: UUID, user_id: UUID, digest: bytes, expires_at: datetime
) -> None:
    await execute(
        conn,
        "INSERT INTO sessions (id, user_id, token_hash, expires_at) VALUES (%s, %s, %s, %s)",
        (session_id, user_id, digest, expires_at),
    )


async def revoke_session(conn: Conn, session_id: UUID) -> None:
    await execute(
        conn,
        "UPDATE sessions SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
        (session_id,),
    )


async def claim_invitations(conn: Conn, *, user_id: UUID, email: str) -> list[DictRow]:
    return await fetch_all(
        conn, "SELECT org_id, role FROM app_claim_invitations(%s, %s)", (user_id, email)
    )


async def membership_role(conn: Conn, *, org_id: UUID, user_id: UUID) -> str | None:
    row = await fetch_one(
        conn,
        "SELECT role FROM memberships WHERE org_id = %s AND user_id = %s",
        (org_id, user_id),
    )
    return str(row["role"]) if row else None


async def user_orgs(conn: Conn, user_id: UUID) -> list[DictRow]:
    return await fetch_all(
        conn,
        """
        SELECT o.id, o.name, m.role FROM memberships AS m JOIN orgs AS o ON o.id = m.org_id
         WHERE m.user_id = %s ORDER BY o.created_at, o.id
        """,
        (user_id,),
    )
