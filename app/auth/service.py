"""Account rules: signup (by mode), login, sessions, OIDC users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import anyio
from psycopg.errors import UniqueViolation

from app.auth import repository as repo
from app.auth.oidc import OidcIdentity
from app.auth.rbac import Role
from app.auth.schemas import LoginOut, OrgOut, SignupIn, SignupOut, UserOut
from app.auth.tokens import SESSION_PREFIX, new_token, token_digest
from app.kit.db import Conn, set_tenant
from app.kit.errors import AuthenticationError, AuthorizationError, ConflictError
from app.kit.ids import new_id
from app.kit.security.passwords import (
    check_password_strength,
    hash_password,
    needs_rehash,
    verify_password,
)
from app.settings import Settings, SignupMode


async def _new_session(conn: Conn, settings: Settings, user_id: UUID) -> tuple[str, datetime]:
    token = new_token(SESSION_PREFIX)
    expires_at = datetime.now(UTC) + timedelta(hours=settings.session_ttl_hours)
    await set_tenant(conn, org_id=None, user_id=user_id)
    await repo.insert_session(
        conn,
        session_id=new_id(),
        user_id=user_id,
        digest=token_digest(token),
        expires_at=expires_at,
    )
    return token, expires_at


async def signup(conn: Conn, settings: Settings, body: SignupIn) -> SignupOut:
    if settings.signup_mode is SignupMode.disabled:
        raise AuthorizationError("Signup is disabled on this server; ask an admin for access.")
    check_password_strength(
        body.password, email=body.email, min_length=settings.password_min_length
    )
    if await repo.find_user_by_email(conn, body.email) is not None:
        raise ConflictError("An account with this email exists; log in instead.")
    password_hash = await anyio.to_thread.run_sync(hash_password, body.password)
    user_id = new_id()
    await set_tenant(conn, org_id=None, user_id=user_id)
    try:
        # A savepoint: two signups racing for one email meet the unique index here.
        async with conn.transaction():
            user = await repo.insert_user(
                conn,
                user_id=user_id,
                email=body.email,
                name=body.name,
                password_hash=password_hash,
            )
    except UniqueViolation as exc:
        raise ConflictError("An account with this email exists; log in instead.") from exc
    invited = await repo.claim_invitations(conn, user_id=user_id, email=body.email)
    org: OrgOut | None = None
    if invited:
        from app.orgs.repository import get_org

        await set_tenant(conn, org_id=invited[0]["org_id"], user_id=user_id)
        row = await get_org(conn, invited[0]["org_id"])
        org = OrgOut.model_validate(row) if row else None
    elif settings.signup_mode is SignupMode.invite_only:
        raise AuthorizationError(
            "Signup here is by invitation only; ask an org admin to invite this email."
        )
    else:
        from app.orgs.service import create_org_for

        org = await create_org_for(
            conn, user_id=user_id, name=body.org_name or f"{body.name}'s org"
        )
    token, expires_at = await _new_session(conn, settings, user_id)
    return SignupOut(
        user=UserOut.model_validate(user), org=org, session_token=token, expires_at=expires_at
    )


async def login(conn: Conn, settings: Settings, email: str, password: str) -> LoginOut:
    user = await repo.find_user_by_email(conn, email)
    stored = user["password_hash"] if user else None
    # Verify even when the user is unknown, so timing does not reveal which emails exist.
    ok = await anyio.to_thread.run_sync(verify_password, stored, password)
    if user is None or not ok:
        raise AuthenticationError("Email or password is wrong.")
    if stored and needs_rehash(stored):
        await set_tenant(conn, org_id=None, user_id=user["id"])
        new_hash = await anyio.to_thread.run_sync(hash_password, password)
        await repo.update_password_hash(conn, user_id=user["id"], password_hash=new_hash)
    token, expires_at = await _new_session(conn, settings, user["id"])
    return LoginOut(session_token=token, expires_at=expires_at)


async def logout(conn: Conn, session_id: UUID) -> None:
    await repo.revoke_session(conn, session_id)


async def oidc_user(conn: Conn, identity: OidcIdentity) -> tuple[UUID, UUID | None, Role | None]:
    """The local user behind an OIDC identity (created on first sight), with its org and role.

    The identity provider is authoritative for teams that use one: the org and role claims
    decide, and the membership row follows them so member lists stay true.
    """
    existing = await repo.find_user_by_oidc(conn, identity.issuer, identity.subject)
    if existing is not None:
        user_id: UUID = existing["id"]
    else:
        if not identity.email:
            raise AuthenticationError("The token carries no email claim.")
        by_email = await repo.find_user_by_email(conn, identity.email)
        if by_email is not None:
            if not identity.email_verified:
                raise AuthenticationError(
                    "An account with this email exists; the identity provider must mark the "
                    "email as verified before it can be linked."
                )
            user_id = by_email["id"]
            await set_tenant(conn, org_id=None, user_id=user_id)
            await repo.link_oidc(
                conn, user_id=user_id, issuer=identity.issuer, subject=identity.subject
            )
        else:
            user_id = new_id()
            # INSERT ... RETURNING must see the new row: scope to the user first.
            await set_tenant(conn, org_id=None, user_id=user_id)
            await repo.insert_user(
                conn,
                user_id=user_id,
                email=identity.email,
                name=identity.name or identity.email.split("@")[0],
                password_hash=None,
                oidc_issuer=identity.issuer,
                oidc_subject=identity.subject,
            )
    if identity.org_id is None:
        return user_id, None, None
    try:
        org_id = UUID(identity.org_id)
        role = Role(identity.role) if identity.role else None
    except ValueError as exc:
        raise AuthenticationError("The token's org or role claim is not valid.") from exc
    if role is None:
        raise AuthenticationError("The token names an org but no role.")
    from app.orgs.repository import get_org, upsert_membership

    await set_tenant(conn, org_id=org_id, user_id=user_id)
    if await get_org(conn, org_id) is None:
        raise AuthenticationError("The token names an org this server does not have.")
    await upsert_membership(conn, org_id=org_id, user_id=user_id, role=role)
    return user_id, org_id, role
