"""Org rules: who may invite whom, the last owner stays, keys carry no more than their maker."""

from __future__ import annotations

from uuid import UUID

from app.auth import repository as auth_repo
from app.auth.principal import AuthKind, Principal
from app.auth.rbac import Permission, Role, can_assign
from app.auth.schemas import OrgOut
from app.auth.tokens import API_KEY_PREFIX, display_prefix, new_token, token_digest
from app.kit.audit import audit_by
from app.kit.db import Conn, set_tenant
from app.kit.errors import AuthorizationError, ConflictError, NotFoundError
from app.kit.ids import new_id
from app.kit.security.text import plain_text
from app.orgs import repository as repo
from app.orgs.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, MemberIn, MemberOut
from app.shares import repository as shares_repo
from app.shares.audit import audit_ended

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


async def create_org(conn: Conn, principal: Principal, name: str) -> OrgOut:
    if principal.kind is AuthKind.api_key or principal.user_id is None:
        raise AuthorizationError("API keys belong to one org; create orgs with a user session.")
    return await create_org_for(conn, user_id=principal.user_id, name=name)


async def get_org(conn: Conn, org_id: UUID) -> OrgOut:
    row = await repo.get_org(conn, org_id)
    if row is None:
        raise NotFoundError("No such org.")
    return OrgOut.model_validate(row)


async def rename_org(conn: Conn, principal: Principal, name: str) -> OrgOut:
    name = plain_text(name, max_length=ORG_NAME_LENGTH)
    row = await repo.rename_org(conn, principal.org, name)
    if row is None:
        raise NotFoundError("No such org.")
    await _audit(conn, principal, "org.update", "org", principal.org, name=name)
    return OrgOut.model_validate(row)


async def delete_org(conn: Conn, principal: Principal) -> None:
    if await repo.delete_org(conn, principal.org) == 0:
        raise NotFoundError("No such org.")


def _check_assign(principal: Principal, role: Role) -> None:
    assert principal.role is not None
    if not can_assign(principal.role, role):
        raise AuthorizationError(f"A {principal.role} cannot grant the {role} role.")


async def list_members(conn: Conn, principal: Principal) -> list[MemberOut]:
    members = [MemberOut.model_validate(r) for r in await repo.list_members(conn, principal.org)]
    invited = [
        MemberOut(
            user_id=None,
            email=r["email"],
            role=r["role"],
            status="invited",
            created_at=r["created_at"],
        )
        for r in await repo.list_invitations(conn, principal.org)
    ]
    return members + invited


async def add_member(conn: Conn, principal: Principal, body: MemberIn) -> MemberOut:
    """Add an existing user at once; invite an unknown email (they join when they sign up)."""
    _check_assign(principal, body.role)
    user = await auth_repo.find_user_by_email(conn, body.email)
    if user is None:
        row = await repo.insert_invitation(
            conn,
            invitation_id=new_id(),
            org_id=principal.org,
            email=body.email,
            role=body.role,
            invited_by=principal.user_id,
        )
        assert row is not None
        await _audit(
            conn,
            principal,
            "member.invite",
            "invitation",
            row["id"],
            email=body.email,
            role=body.role.value,
        )
        return MemberOut(
            user_id=None,
            email=row["email"],
            role=row["role"],
            status="invited",
            created_at=row["created_at"],
        )
    if await repo.get_member(conn, principal.org, user["id"]) is not None:
        raise ConflictError("This user is already a member; change their role instead.")
    await repo.upsert_membership(conn, org_id=principal.org, user_id=user["id"], role=body.role)
    await _audit(conn, principal, "member.add", "user", user["id"], role=body.role.value)
    member = await repo.get_member(conn, principal.org, user["id"])
    assert member is not None
    return MemberOut.model_validate(member)


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
    await repo.revoke_api_key(conn, principal.org, key_id)
    await _audit(conn, principal, "api_key.revoke", "api_key", key_id)


def ensure_path_org(principal: Principal, org_id: UUID) -> None:
    if principal.org_id != org_id:
        raise NotFoundError("No such org.")
