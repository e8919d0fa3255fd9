"""SQL for users, sessions, and the authentication look-ups (SECURITY DEFINER functions)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from psycopg.rows import DictRow

from app.auth.principal import forget_principals
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


async def find_user_for_login(conn: Conn, email: str) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT id, email, name, password_hash, email_verified_at FROM app_find_user_for_login(%s)",
        (email,),
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
    email_verified: bool = False,
) -> DictRow:
    row = await fetch_one(
        conn,
        """
        INSERT INTO users
            (id, email, name, password_hash, oidc_issuer, oidc_subject, email_verified_at)
        VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)
        RETURNING id, email, name, email_verified_at IS NOT NULL AS email_verified, created_at
        """,
        (user_id, email, name, password_hash, oidc_issuer, oidc_subject, email_verified),
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
        conn,
        "SELECT id, email, name, email_verified_at IS NOT NULL AS email_verified, password_hash,"
        " created_at FROM users WHERE id = %s",
        (user_id,),
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
    forget_principals(conn)
    await execute(
        conn,
        "UPDATE sessions SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
        (session_id,),
    )


async def revoke_sessions(conn: Conn, user_id: UUID, *, keep: UUID | None = None) -> int:
    """End every live session of the user (but ``keep``): a changed password or "sign out
    everywhere"."""
    forget_principals(conn)
    return await execute(
        conn,
        "UPDATE sessions SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL "
        "AND id IS DISTINCT FROM %s",
        (user_id, keep),
    )


async def mark_email_verified(conn: Conn, *, user_id: UUID, email: str) -> int:
    """Verified only if the address is still the account's (the token names the one it proves)."""
    return await execute(
        conn,
        "UPDATE users SET email_verified_at = coalesce(email_verified_at, now()), "
        "updated_at = now() WHERE id = %s AND lower(email) = lower(%s)",
        (user_id, email),
    )


async def insert_user_token(
    conn: Conn,
    *,
    token_id: UUID,
    user_id: UUID,
    purpose: str,
    digest: bytes,
    email: str,
    expires_at: datetime,
) -> None:
    # A new link retires the user's earlier unused links of the same kind.
    await retire_user_tokens(conn, user_id, purpose)
    await execute(
        conn,
        "INSERT INTO user_tokens (id, user_id, purpose, token_hash, email, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (token_id, user_id, purpose, digest, email, expires_at),
    )


async def use_user_token(conn: Conn, digest: bytes, purpose: str) -> DictRow | None:
    return await fetch_one(
        conn, "SELECT user_id, email FROM app_use_user_token(%s, %s)", (digest, purpose)
    )


async def retire_user_tokens(conn: Conn, user_id: UUID, purpose: str) -> None:
    await execute(
        conn,
        "UPDATE user_tokens SET used_at = now() WHERE user_id = %s AND purpose = %s "
        "AND used_at IS NULL",
        (user_id, purpose),
    )


async def email_invited(conn: Conn, email: str) -> bool:
    row = await fetch_one(conn, "SELECT app_email_invited(%s) AS invited", (email,))
    return bool(row and row["invited"])


async def find_oidc_binding(conn: Conn, issuer: str, claim_value: str) -> DictRow | None:
    return await fetch_one(
        conn,
        "SELECT org_id, max_role FROM app_find_oidc_binding(%s, %s)",
        (issuer, claim_value),
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
