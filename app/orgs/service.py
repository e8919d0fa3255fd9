"""Org rules: who may invite whom, the last owner stays, keys carry no more than their maker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from uuid import UUID

import structlog

from app.auth import repository as auth_repo
from app.auth.principal import AuthKind, Principal, forget_principals
from app.auth.rbac import Permission, Role, at_most, can_assign
from app.auth.schemas import OrgMembershipOut, OrgOut
from app.auth.tokens import (
    API_KEY_PREFIX,
    INVITATION_PREFIX,
    display_prefix,
    new_token,
    token_digest,
)
from app.jobs.queue import MailKind, defer_mail, defer_org_purge
from app.kit.audit import audit_by, write_audit
from app.kit.db import Conn, set_tenant
from app.kit.errors import AuthorizationError, ConflictError, NotFoundError, ValidationError
from app.kit.ids import new_id
from app.kit.security.text import plain_text
from app.mail.sender import compose, mailed_link
from app.orgs import repository as repo
from app.orgs.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    InvitationOut,
    MemberIn,
    MemberOut,
    OidcBindingIn,
    OidcBindingOut,
)
from app.settings import Settings, SignupMode
from app.shares import repository as shares_repo
from app.shares.audit import audit_ended

log = structlog.stdlib.get_logger(__name__)

# As the request schemas cap them.
ORG_NAME_LENGTH = 200
API_KEY_NAME_LENGTH = 100


async def _audit(
    conn: Conn, p: Principal, action: str, target_type: str, target_id: object, **data: object
) -> None:
    await audit_by(conn, p, action, target_type, str(target_id), **data)


async def create_org_for(conn: Conn, *, user_id: UUID, name: str) -> OrgOut:
    org_id = new_id()
    await set_tenant(conn, org_id=org_id, user_id=user_id)
    name = plain_text(name, max_length=ORG_NAME_LENGTH)
    row = await repo.insert_org(conn, org_id=org_id, name=name)
    await repo.upsert_membership(conn, org_id=org_id, user_id=user_id, role=Role.owner)
    return OrgOut.model_validate(row)


async def create_org(conn: Conn, settings: Settings, principal: Principal, name: str) -> OrgOut:
    if principal.kind is AuthKind.api_key or principal.user_id is None:
        raise AuthorizationError("API keys belong to one org; create orgs with a user session.")
    if settings.signup_mode is not SignupMode.open:
        # Where signup is closed, an account made with an invited address (no proof of the
        # mailbox yet) joins by accepting; it does not open orgs of its own until verified.
        await set_tenant(conn, org_id=None, user_id=principal.user_id)
        user = await auth_repo.get_user(conn, principal.user_id)
        if user is None or not user["email_verified"]:
            raise AuthorizationError(
                "Verify your email first (POST /api/auth/verify with the mailed link)."
            )
    return await create_org_for(conn, user_id=principal.user_id, name=name)


async def revoke_keys_everywhere(conn: Conn, user_id: UUID) -> None:
    """Revoke every API key the user made, in each org they belong to (audited there)."""
    forget_principals(conn)
    for org in await auth_repo.user_orgs(conn, user_id):
        await set_tenant(conn, org_id=org["id"], user_id=user_id)
        if await repo.revoke_member_keys(conn, org["id"], user_id):
            await write_audit(
                conn,
                org_id=org["id"],
                actor_user_id=user_id,
                actor_key_id=None,
                action="api_key.revoke_all",
                target_type="user",
                target_id=user_id,
                data={"reason": "password reset proved the email for the first time"},
            )
    await set_tenant(conn, org_id=None, user_id=user_id)


async def org_exists(conn: Conn, org_id: UUID) -> bool:
    """Whether the org is there (for the transaction's tenant settings)."""
    return await repo.get_org(conn, org_id) is not None


async def find_org(conn: Conn, org_id: UUID) -> OrgOut | None:
    row = await repo.get_org(conn, org_id)
    return OrgOut.model_validate(row) if row is not None else None


async def get_org(conn: Conn, org_id: UUID) -> OrgOut:
    org = await find_org(conn, org_id)
    if org is None:
        raise NotFoundError("No such org.")
    return org


async def rename_org(conn: Conn, principal: Principal, name: str) -> OrgOut:
    name = plain_text(name, max_length=ORG_NAME_LENGTH)
    row = await repo.rename_org(conn, principal.org, name)
    if row is None:
        raise NotFoundError("No such org.")
    await _audit(conn, principal, "org.update", "org", principal.org, name=name)
    return OrgOut.model_validate(row)


async def delete_org(conn: Conn, principal: Principal) -> None:
    forget_principals(conn)  # the org's keys authenticate nobody once it is gone
    if await repo.delete_org(conn, principal.org) == 0:
        raise NotFoundError("No such org.")
    # Its objects and cached values outside PostgreSQL: deleted by jobs that commit with this.
    jobs = await defer_org_purge(conn, org_id=principal.org)
    # Not in audit_log: its rows cascade with the org.
    log.info(
        "org deleted",
        org_id=str(principal.org),
        actor_user_id=str(principal.user_id) if principal.user_id else None,
        actor_key_id=str(principal.key_id) if principal.key_id else None,
        purge_jobs=jobs,
    )


def _check_assign(principal: Principal, role: Role) -> None:
    assert principal.role is not None
    if not can_assign(principal.role, role):
        raise AuthorizationError(f"A {principal.role} cannot grant the {role} role.")


async def list_members(conn: Conn, principal: Principal) -> list[MemberOut]:
    return [MemberOut.model_validate(r) for r in await repo.list_members(conn, principal.org)]


async def invite_member(
    conn: Conn, settings: Settings, principal: Principal, body: MemberIn
) -> InvitationOut:
    """Invite an address: a job mails it a single-use link. Nobody joins without accepting it,
    signed in with that address verified (``accept_invitation``); existing accounts too."""
    _check_assign(principal, body.role)
    if await repo.member_by_email(conn, principal.org, body.email) is not None:
        raise ConflictError("This user is already a member; change their role instead.")
    # Inviting again replaces the open invitation: only someone who could have made it may.
    existing = await repo.open_invitation_by_email(conn, principal.org, body.email)
    if existing is not None:
        _check_assign(principal, Role(existing["role"]))
    ttl = timedelta(hours=settings.invitation_ttl_hours)
    row = await repo.insert_invitation(
        conn,
        invitation_id=new_id(),
        org_id=principal.org,
        email=body.email,
        role=body.role,
        invited_by=principal.user_id,
        expires_at=datetime.now(UTC) + ttl,
    )
    await _audit(
        conn,
        principal,
        "member.invite",
        "invitation",
        row["id"],
        email=body.email,
        role=body.role.value,
    )
    await defer_mail(
        conn,
        MailKind.invitation,
        lock=f"invitation:{row['id']}",
        org_id=str(principal.org),
        invitation_id=str(row["id"]),
    )
    return InvitationOut.model_validate(row)


async def _target_member(conn: Conn, principal: Principal, user_id: UUID) -> Role:
    member = await repo.get_member(conn, principal.org, user_id)
    if member is None:
        raise NotFoundError("No such member.")
    return Role(member["role"])


async def _keep_an_owner(conn: Conn, org_id: UUID, leaving: UUID) -> None:
    owners = await repo.lock_owners(conn, org_id)
    if owners == [leaving]:
        raise ConflictError(
            "The last owner cannot leave or be demoted; make another member owner first."
        )


async def change_role(conn: Conn, principal: Principal, user_id: UUID, role: Role) -> MemberOut:
    current = await _target_member(conn, principal, user_id)
    _check_assign(principal, current)
    _check_assign(principal, role)
    if current is Role.owner and role is not Role.owner:
        await _keep_an_owner(conn, principal.org, user_id)
    forget_principals(conn)  # the member's keys act with at most their new role
    await repo.set_member_role(conn, principal.org, user_id, role)
    if role is Role.reader and current is not Role.reader:
        # A reader may not share: the links they made end (and are audited as such).
        ended = await shares_repo.end_by_creator(conn, principal.org, user_id)
        await audit_ended(conn, principal, ended, "member became a reader")
    await _audit(
        conn, principal, "member.role_change", "user", user_id, old=current.value, new=role.value
    )
    member = await repo.get_member(conn, principal.org, user_id)
    assert member is not None
    return MemberOut.model_validate(member)


async def remove_member(conn: Conn, principal: Principal, user_id: UUID) -> None:
    current = await _target_member(conn, principal, user_id)
    leaving_self = user_id == principal.user_id and principal.kind is not AuthKind.api_key
    if not leaving_self:
        if not principal.can(Permission.members_manage):
            raise AuthorizationError(f"Your role ({principal.role}) cannot remove members.")
        _check_assign(principal, current)
    if current is Role.owner:
        await _keep_an_owner(conn, principal.org, user_id)
    forget_principals(conn)
    await repo.delete_member(conn, principal.org, user_id)
    # A departed member's keys go with them, and so do the links they made: nobody would be
    # left who could revoke a link to their (private) conversation.
    await repo.revoke_member_keys(conn, principal.org, user_id)
    ended = await shares_repo.end_by_creator(conn, principal.org, user_id)
    await audit_ended(conn, principal, ended, "member removed")
    await _audit(conn, principal, "member.remove", "user", user_id, role=current.value)


async def create_api_key(conn: Conn, principal: Principal, body: ApiKeyIn) -> ApiKeyCreated:
    _check_assign(principal, body.role)
    name = plain_text(body.name, max_length=API_KEY_NAME_LENGTH)
    secret = new_token(API_KEY_PREFIX)
    row = await repo.insert_api_key(
        conn,
        key_id=new_id(),
        org_id=principal.org,
        name=name,
        prefix=display_prefix(secret),
        digest=token_digest(secret),
        role=body.role,
        created_by=principal.user_id,
    )
    await _audit(
        conn,
        principal,
        "api_key.create",
        "api_key",
        row["id"],
        name=name,
        role=body.role.value,
    )
    return ApiKeyCreated(key=secret, **row)


async def list_api_keys(conn: Conn, principal: Principal) -> list[ApiKeyOut]:
    return [ApiKeyOut.model_validate(r) for r in await repo.list_api_keys(conn, principal.org)]


async def revoke_api_key(conn: Conn, principal: Principal, key_id: UUID) -> None:
    key = await repo.get_api_key(conn, principal.org, key_id)
    if key is None:
        raise NotFoundError("No such API key.")
    _check_assign(principal, Role(key["role"]))
    forget_principals(conn)
    await repo.revoke_api_key(conn, principal.org, key_id)
    await _audit(conn, principal, "api_key.revoke", "api_key", key_id)


async def list_invitations(conn: Conn, principal: Principal) -> list[InvitationOut]:
    return [
        InvitationOut.model_validate(r) for r in await repo.list_invitations(conn, principal.org)
    ]


async def revoke_invitation(conn: Conn, principal: Principal, invitation_id: UUID) -> None:
    invitation = await repo.get_open_invitation(conn, principal.org, invitation_id)
    if invitation is None:
        raise NotFoundError("No such invitation (or it was already accepted or revoked).")
    _check_assign(principal, Role(invitation["role"]))
    await repo.revoke_invitation(conn, principal.org, invitation_id)
    await _audit(
        conn,
        principal,
        "member.invite_revoke",
        "invitation",
        invitation_id,
        email=invitation["email"],
    )


async def accept_invitation(conn: Conn, principal: Principal, token: str) -> OrgMembershipOut:
    """Join the org an invitation names: signed in as a person whose verified email is the
    invited address, with the token from the mailed link, once."""
    if principal.kind is AuthKind.api_key or principal.user_id is None:
        raise AuthorizationError("Accept an invitation signed in as yourself, not with an API key.")
    user_id = principal.user_id
    await set_tenant(conn, org_id=None, user_id=user_id)
    user = await auth_repo.get_user(conn, user_id)
    assert user is not None
    digest = token_digest(token)
    invitation = await repo.find_invitation_by_token(conn, digest)
    if invitation is None:
        raise NotFoundError(
            "This invitation is unknown, used, revoked or expired; ask for a new one."
        )
    if not user["email_verified"]:
        raise AuthorizationError(
            "Verify your email first (the link mailed at signup; POST /api/auth/verify/resend "
            "sends another), then accept the invitation."
        )
    if user["email"].lower() != invitation["email"].lower():
        raise AuthorizationError(
            "This invitation was sent to another address; sign in with that account to accept it."
        )
    org_id: UUID = invitation["org_id"]
    await set_tenant(conn, org_id=org_id, user_id=user_id)
    if await repo.get_member(conn, org_id, user_id) is not None:
        raise ConflictError("You are already a member of this org.")
    accepted = await repo.accept_invitation(
        conn, org_id=org_id, invitation_id=invitation["id"], digest=digest, user_id=user_id
    )
    if accepted is None:  # another request used it a moment ago
        raise NotFoundError(
            "This invitation is unknown, used, revoked or expired; ask for a new one."
        )
    role = Role(accepted["role"])
    await repo.upsert_membership(conn, org_id=org_id, user_id=user_id, role=role)
    await write_audit(
        conn,
        org_id=org_id,
        actor_user_id=user_id,
        actor_key_id=None,
        action="member.join",
        target_type="user",
        target_id=user_id,
        data={"invitation_id": str(invitation["id"]), "role": role.value},
    )
    org = await repo.get_org(conn, org_id)
    assert org is not None
    return OrgMembershipOut(id=org_id, name=org["name"], role=role)


async def invitation_mail(
    conn: Conn, settings: Settings, *, org_id: UUID, invitation_id: UUID
) -> EmailMessage | None:
    """The invitation's mail, with a new token whose hash is stored here (the token never sits
    in the job queue); None when the invitation ended before the job ran."""
    await set_tenant(conn, org_id=org_id, user_id=None)
    token = new_token(INVITATION_PREFIX)
    invitation = await repo.set_invitation_token(conn, org_id, invitation_id, token_digest(token))
    if invitation is None:
        return None
    org = await repo.get_org(conn, org_id)
    assert org is not None
    link = mailed_link(settings, "invite", token)
    expires = invitation["expires_at"].strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f'You are invited to join "{org["name"]}" on Record as {invitation["role"]}.\n\n'
        f"To accept, open this link, signed in with this address (sign up first if you have "
        f"no account):\n\n  {link}\n\n"
        f'(or POST /api/invitations/accept with {{"token": "{token}"}}). '
        f"It works once, until {expires}.\n\n"
        "If you did not expect this, ignore this message.\n"
    )
    return compose(
        settings, to=invitation["email"], subject=f"Join {org['name']} on Record", body=body
    )


async def apply_idp_role(
    conn: Conn, *, org_id: UUID, user_id: UUID, role: Role, max_role: Role, issuer: str
) -> Role:
    """Make the membership what the bound identity provider says, by the members API's rules,
    and return the role the person acts with. A provider may grant up to ``max_role`` only, so
    a role above that (an owner, with an admin-capped binding) is the members API's to change,
    not the provider's; the last owner is never demoted; a new reader's share links end. Every
    change is audited, with the person signing in as the actor."""
    member = await repo.get_member(conn, org_id, user_id)
    current = Role(member["role"]) if member else None
    if current is role:
        return role
    if current is not None and not at_most(current, max_role):
        return current
    if current is Role.owner:
        await _keep_an_owner(conn, org_id, user_id)
    await repo.upsert_membership(conn, org_id=org_id, user_id=user_id, role=role)
    actor = Principal(kind=AuthKind.oidc, user_id=user_id, org_id=org_id, role=role)
    if role is Role.reader and current is not None:
        ended = await shares_repo.end_by_creator(conn, org_id, user_id)
        await audit_ended(conn, actor, ended, "member became a reader")
    await _audit(
        conn,
        actor,
        "member.add" if current is None else "member.role_change",
        "user",
        user_id,
        source="oidc",
        issuer=issuer,
        new=role.value,
        **({"old": current.value} if current else {}),
    )
    return role


async def get_oidc_binding(conn: Conn, principal: Principal) -> OidcBindingOut:
    row = await repo.get_oidc_binding(conn, principal.org)
    if row is None:
        raise NotFoundError("This org has no identity provider binding.")
    return OidcBindingOut.model_validate(row)


async def put_oidc_binding(conn: Conn, principal: Principal, body: OidcBindingIn) -> OidcBindingOut:
    # The claim value is the org's own id. A free-form value ("acme") would go to whichever
    # org asked for it first, and with it the people the provider sends with that value.
    claim_value = str(principal.org)
    if body.claim_value is not None and body.claim_value != claim_value:
        raise ValidationError(
            f"The org claim must carry this org's id ({claim_value}); set the identity "
            "provider's claim to that value."
        )
    row = await repo.put_oidc_binding(
        conn,
        org_id=principal.org,
        issuer=body.issuer,
        claim_value=claim_value,
        max_role=body.max_role,
        user_id=principal.user_id,
    )
    await _audit(
        conn,
        principal,
        "oidc_binding.set",
        "org",
        principal.org,
        issuer=body.issuer,
        claim_value=claim_value,
        max_role=body.max_role.value,
    )
    return OidcBindingOut.model_validate(row)


async def delete_oidc_binding(conn: Conn, principal: Principal) -> None:
    if not await repo.delete_oidc_binding(conn, principal.org):
        raise NotFoundError("This org has no identity provider binding.")
    await _audit(conn, principal, "oidc_binding.delete", "org", principal.org)
