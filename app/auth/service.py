"""Account rules: signup (by mode), login, sessions, OIDC users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from uuid import UUID

import anyio
from psycopg.errors import UniqueViolation

from app.auth import repository as repo
from app.auth.oidc import OidcIdentity
from app.auth.principal import AuthKind, Principal
from app.auth.rbac import Role, at_most
from app.auth.schemas import (
    LoginOut,
    MeOut,
    OrgMembershipOut,
    OrgOut,
    SignupIn,
    SignupOut,
    UserOut,
)
from app.auth.tokens import (
    RESET_PREFIX,
    SESSION_PREFIX,
    VERIFY_PREFIX,
    new_token,
    token_digest,
)
from app.jobs.queue import MailKind, defer_mail
from app.kit.db import Conn, set_tenant
from app.kit.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    ValidationError,
    WrongPasswordError,
)
from app.kit.ids import new_id
from app.kit.security.passwords import (
    check_password_strength,
    hash_password,
    needs_rehash,
    verify_password,
)
from app.kit.security.text import plain_text
from app.mail.sender import compose, mailed_link
from app.orgs.service import (
    apply_idp_role,
    create_org_for,
    find_org,
    revoke_keys_everywhere,
)
from app.settings import Settings, SignupMode

USER_NAME_LENGTH = 200  # as users.name allows
PURPOSE_VERIFY = "verify_email"
PURPOSE_RESET = "password_reset"


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
    """A new account, unverified: a job mails the verification link. Invitations are never
    claimed here; an invited person accepts theirs with the mailed token once verified."""
    if settings.signup_mode is SignupMode.disabled:
        raise AuthorizationError("Signup is disabled on this server; ask an admin for access.")
    check_password_strength(
        body.password, email=body.email, min_length=settings.password_min_length
    )
    if await repo.find_user_for_login(conn, body.email) is not None:
        raise ConflictError("An account with this email exists; log in instead.")
    invite_only = settings.signup_mode is SignupMode.invite_only
    if invite_only and not await repo.email_invited(conn, body.email):
        raise AuthorizationError(
            "Signup here is by invitation only; ask an org admin to invite this email."
        )
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
                name=plain_text(body.name, max_length=USER_NAME_LENGTH),
                password_hash=password_hash,
            )
    except UniqueViolation as exc:
        raise ConflictError("An account with this email exists; log in instead.") from exc
    org: OrgOut | None = None
    if not invite_only:
        org = await create_org_for(
            conn, user_id=user_id, name=body.org_name or f"{body.name}'s org"
        )
    await defer_mail(conn, MailKind.verify_email, lock=f"verify:{user_id}", user_id=str(user_id))
    token, expires_at = await _new_session(conn, settings, user_id)
    return SignupOut(
        user=UserOut.model_validate(user), org=org, session_token=token, expires_at=expires_at
    )


async def login(conn: Conn, settings: Settings, email: str, password: str) -> LoginOut:
    user = await repo.find_user_for_login(conn, email)
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


def _person(principal: Principal) -> UUID:
    """The signed-in person behind a session or OIDC token; API keys act for nobody here."""
    if principal.kind is AuthKind.api_key or principal.user_id is None:
        raise AuthorizationError("Sign in as a person for this; API keys cannot.")
    return principal.user_id


async def resend_verification(conn: Conn, principal: Principal) -> None:
    user_id = _person(principal)
    await set_tenant(conn, org_id=None, user_id=user_id)
    user = await repo.get_user(conn, user_id)
    if user is None:  # pragma: no cover - authenticated users exist
        raise AuthenticationError("No such user.")
    if user["email_verified"]:
        raise ConflictError("This email is already verified.")
    await defer_mail(conn, MailKind.verify_email, lock=f"verify:{user_id}", user_id=str(user_id))


async def verify_email(conn: Conn, principal: Principal, token: str) -> None:
    """Verify the signed-in account's email with its mailed token. Signed in, because the link
    proves the mailbox and the session proves the password: someone who signed up with another
    person's address first cannot have that person verify the squatted account by a click (the
    owner of the address takes it back with a password reset instead)."""
    user_id = _person(principal)
    used = await repo.use_user_token(conn, token_digest(token), PURPOSE_VERIFY)
    if used is None or used["user_id"] != user_id:
        raise ValidationError(
            "This verification link is unknown, used, expired or for another account; sign in "
            "to the account it was sent for, or ask for a new one (POST /api/auth/verify/resend)."
        )
    await set_tenant(conn, org_id=None, user_id=user_id)
    if not await repo.mark_email_verified(conn, user_id=used["user_id"], email=used["email"]):
        raise ValidationError("This link was for another address; ask for a new one.")


async def session_email(conn: Conn, principal: Principal) -> str:
    """The email of the person signed in with a session (password changes need one)."""
    if principal.kind is not AuthKind.session or principal.user_id is None:
        raise AuthorizationError("Change a password signed in with a session (log in first).")
    await set_tenant(conn, org_id=None, user_id=principal.user_id)
    user = await repo.get_user(conn, principal.user_id)
    assert user is not None
    return str(user["email"])


async def change_password(
    conn: Conn, settings: Settings, principal: Principal, old: str, new: str
) -> None:
    if principal.kind is not AuthKind.session or principal.session_id is None:
        raise AuthorizationError("Change a password signed in with a session (log in first).")
    user_id = principal.user_id
    assert user_id is not None
    await set_tenant(conn, org_id=None, user_id=user_id)
    user = await repo.get_user(conn, user_id)
    assert user is not None
    if not await anyio.to_thread.run_sync(verify_password, user["password_hash"], old):
        raise WrongPasswordError(
            "The current password is wrong; try again, or reset it by email "
            "(POST /api/auth/password-reset)."
        )
    check_password_strength(new, email=user["email"], min_length=settings.password_min_length)
    new_hash = await anyio.to_thread.run_sync(hash_password, new)
    await repo.update_password_hash(conn, user_id=user_id, password_hash=new_hash)
    # Whoever else holds a session (the reason to change a password) is signed out.
    await repo.revoke_sessions(conn, user_id, keep=principal.session_id)
    await repo.retire_user_tokens(conn, user_id, PURPOSE_RESET)
    await _notify_password_changed(conn, user_id)


async def logout_everywhere(conn: Conn, principal: Principal) -> int:
    user_id = _person(principal)
    await set_tenant(conn, org_id=None, user_id=user_id)
    return await repo.revoke_sessions(conn, user_id)


async def request_password_reset(conn: Conn, email: str) -> None:
    """Queue the reset mail. The answer never says whether the address has an account: the job
    looks the address up and mails nothing for an unknown one."""
    await defer_mail(conn, MailKind.password_reset, lock=f"reset:{email.lower()}", email=email)


async def reset_password(conn: Conn, settings: Settings, token: str, password: str) -> None:
    used = await repo.use_user_token(conn, token_digest(token), PURPOSE_RESET)
    if used is None:
        raise ValidationError(
            "This reset link is unknown, used or expired; ask for a new one "
            "(POST /api/auth/password-reset)."
        )
    user_id: UUID = used["user_id"]
    await set_tenant(conn, org_id=None, user_id=user_id)
    check_password_strength(password, email=used["email"], min_length=settings.password_min_length)
    new_hash = await anyio.to_thread.run_sync(hash_password, password)
    await repo.update_password_hash(conn, user_id=user_id, password_hash=new_hash)
    # The link proved the mailbox: the address is verified, and every session ends (a squatter
    # who signed up with this address first is signed out and locked out).
    user = await repo.get_user(conn, user_id)
    assert user is not None
    first_proof = not user["email_verified"]
    await repo.mark_email_verified(conn, user_id=user_id, email=used["email"])
    await repo.revoke_sessions(conn, user_id)
    await repo.retire_user_tokens(conn, user_id, PURPOSE_RESET)
    await _notify_password_changed(conn, user_id)
    if first_proof:
        # The mailbox's owner just proved the address for the first time: whoever made the
        # account before (someone who signed up with this address) loses the keys they made.
        await revoke_keys_everywhere(conn, user_id)


# Mail, composed inside the job's transaction: the token is made and its hash stored there,
# so the token itself never sits in the job queue.
async def _issue_user_token(
    conn: Conn, *, user_id: UUID, purpose: str, email: str, ttl: timedelta, prefix: str
) -> str:
    token = new_token(prefix)
    await repo.insert_user_token(
        conn,
        token_id=new_id(),
        user_id=user_id,
        purpose=purpose,
        digest=token_digest(token),
        email=email,
        expires_at=datetime.now(UTC) + ttl,
    )
    return token


async def verification_mail(conn: Conn, settings: Settings, user_id: UUID) -> EmailMessage | None:
    await set_tenant(conn, org_id=None, user_id=user_id)
    user = await repo.get_user(conn, user_id)
    if user is None or user["email_verified"]:
        return None
    hours = settings.email_verification_ttl_hours
    token = await _issue_user_token(
        conn,
        user_id=user_id,
        purpose=PURPOSE_VERIFY,
        email=user["email"],
        ttl=timedelta(hours=hours),
        prefix=VERIFY_PREFIX,
    )
    body = (
        f"Hello {user['name']},\n\n"
        "Confirm that this address is yours by opening this link:\n\n"
        f"  {mailed_link(settings, 'verify', token)}\n\n"
        f'(or POST /api/auth/verify with {{"token": "{token}"}}). '
        f"It works once, for {hours} hours.\n\n"
        "If you did not sign up for Record, ignore this message.\n"
    )
    return compose(settings, to=user["email"], subject="Confirm your email for Record", body=body)


async def _notify_password_changed(conn: Conn, user_id: UUID) -> None:
    # The account's owner hears of every change (ASVS 2.2.3): if it was not them, they reset.
    lock = f"password-changed:{user_id}:{new_id()}"  # one mail per change
    await defer_mail(conn, MailKind.password_changed, lock=lock, user_id=str(user_id))


async def password_changed_mail(
    conn: Conn, settings: Settings, user_id: UUID
) -> EmailMessage | None:
    await set_tenant(conn, org_id=None, user_id=user_id)
    user = await repo.get_user(conn, user_id)
    if user is None:
        return None
    body = (
        f"Hello {user['name']},\n\n"
        "The password of your Record account was just changed, and its other sessions were "
        "signed out.\n\nIf that was not you, reset it now (POST /api/auth/password-reset "
        "with this address): the link goes to this mailbox only.\n"
    )
    return compose(
        settings, to=user["email"], subject="Your Record password was changed", body=body
    )


async def password_reset_mail(conn: Conn, settings: Settings, email: str) -> EmailMessage | None:
    user = await repo.find_user_for_login(conn, email)
    if user is None or user["password_hash"] is None:
        return None  # nothing to reset; the caller was told the same as anyone else
    await set_tenant(conn, org_id=None, user_id=user["id"])
    minutes = settings.password_reset_ttl_minutes
    token = await _issue_user_token(
        conn,
        user_id=user["id"],
        purpose=PURPOSE_RESET,
        email=user["email"],
        ttl=timedelta(minutes=minutes),
        prefix=RESET_PREFIX,
    )
    body = (
        f"Hello {user['name']},\n\n"
        "Someone asked to reset the password of your Record account. To choose a new one, "
        "open this link:\n\n"
        f"  {mailed_link(settings, 'reset-password', token)}\n\n"
        f'(or POST /api/auth/password-reset/confirm with {{"token": "{token}", '
        f'"password": "..."}}). It works once, for {minutes} minutes, and signs out '
        "every session.\n\nIf it was not you, ignore this message: nothing changes.\n"
    )
    return compose(settings, to=user["email"], subject="Reset your Record password", body=body)


async def logout(conn: Conn, session_id: UUID) -> None:
    await repo.revoke_session(conn, session_id)


async def oidc_user(conn: Conn, identity: OidcIdentity) -> tuple[UUID, UUID | None, Role | None]:
    """The local user behind an OIDC identity (created on first sight), with its org and role.

    Org and role claims count only for an org whose owner bound this issuer and claim value to
    it (``org_oidc_bindings``), up to the role the binding allows, and under the members API's
    rules (the last owner stays an owner). Every membership change they make is audited.
    """
    existing = await repo.find_user_by_oidc(conn, identity.issuer, identity.subject)
    if existing is not None:
        user_id: UUID = existing["id"]
    else:
        if not identity.email:
            raise AuthenticationError("The token carries no email claim.")
        by_email = await repo.find_user_for_login(conn, identity.email)
        if by_email is not None:
            # Both sides must have proved the address: the provider (email_verified) and the
            # local account (its mailed link), or a squatter's account would get the identity.
            if not identity.email_verified or by_email["email_verified_at"] is None:
                raise AuthenticationError(
                    "An account with this email exists; it can be linked to this identity "
                    "provider only once both have verified the email (verify it from the "
                    "mailed link, or reset its password by email)."
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
                name=plain_text(
                    identity.name or identity.email.split("@")[0], max_length=USER_NAME_LENGTH
                ),
                password_hash=None,
                oidc_issuer=identity.issuer,
                oidc_subject=identity.subject,
                email_verified=identity.email_verified,
            )
    if identity.org_claim is None:
        return user_id, None, None
    binding = await repo.find_oidc_binding(conn, identity.issuer, identity.org_claim)
    if binding is None:
        raise AuthenticationError(
            "No org here accepts this identity provider's org claim; an org owner binds it "
            "with PUT /api/orgs/{org_id}/oidc-binding."
        )
    try:
        role = Role(identity.role) if identity.role else None
    except ValueError as exc:
        raise AuthenticationError("The token's role claim is not a role.") from exc
    if role is None:
        raise AuthenticationError("The token names an org but no role.")
    if not at_most(role, Role(binding["max_role"])):
        raise AuthenticationError(
            f"This org lets its identity provider grant at most the {binding['max_role']} role."
        )
    org_id: UUID = binding["org_id"]
    await set_tenant(conn, org_id=org_id, user_id=user_id)
    acting = await apply_idp_role(
        conn,
        org_id=org_id,
        user_id=user_id,
        role=role,
        max_role=Role(binding["max_role"]),
        issuer=identity.issuer,
    )
    return user_id, org_id, acting


async def me(conn: Conn, principal: Principal) -> MeOut:
    """Who the caller is: the account (none for an API key), the request's org with the
    caller's role in it, and (sessions) every org the account belongs to."""
    user = await repo.get_user(conn, principal.user_id) if principal.user_id else None
    orgs: list[OrgMembershipOut] = []
    if principal.kind is not AuthKind.api_key and principal.user_id is not None:
        await set_tenant(conn, org_id=principal.org_id, user_id=principal.user_id)
        orgs = [
            OrgMembershipOut.model_validate(r)
            for r in await repo.user_orgs(conn, principal.user_id)
        ]
    current = None
    if principal.org_id is not None and principal.role is not None:
        org = await find_org(conn, principal.org_id)
        current = OrgMembershipOut(id=org.id, name=org.name, role=principal.role) if org else None
    return MeOut(
        auth=principal.kind.value,
        user=UserOut.model_validate(user) if user else None,
        org=current,
        orgs=orgs if orgs else ([current] if current else []),
        api_key_id=principal.key_id,
    )
