"""HTTP for orgs, members and API keys. Every route states the permission it needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response, status

from app.auth.deps import CurrentPrincipal, require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.auth.schemas import OrgMembershipOut, OrgOut
from app.kit.deps import DbConn, ServicesDep
from app.kit.errors import NotFoundError
from app.orgs import service
from app.orgs.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    InvitationAcceptIn,
    InvitationList,
    InvitationOut,
    MemberIn,
    MemberList,
    MemberOut,
    MemberPatch,
    OidcBindingIn,
    OidcBindingOut,
    OrgIn,
)

router = APIRouter(prefix="/api/orgs", tags=["orgs"])
invitations = APIRouter(prefix="/api/invitations", tags=["orgs"])


def in_path_org(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """``require(permission)`` for a route under ``/api/orgs/{org_id}``: the path's org must be
    the request's org (``X-Record-Org`` or the API key's), else 404, as for any org the caller
    cannot see. The role is checked first, so a caller without it learns nothing of the org."""
    check = require(permission)

    # A default, not Annotated[...]: the annotation would name a local that FastAPI cannot
    # resolve from this module's globals (annotations are strings here).
    async def dependency(org_id: UUID, principal: Principal = Depends(check)) -> Principal:  # noqa: B008
        if principal.org_id != org_id:
            raise NotFoundError("No such org.")
        return principal

    dependency.__name__ = f"in_path_org_{permission.name}"
    return dependency


OrgReader = Annotated[Principal, Depends(in_path_org(Permission.org_read))]
OrgEditor = Annotated[Principal, Depends(in_path_org(Permission.org_update))]
OrgDeleter = Annotated[Principal, Depends(in_path_org(Permission.org_delete))]
MemberReader = Annotated[Principal, Depends(in_path_org(Permission.members_read))]
MemberManager = Annotated[Principal, Depends(in_path_org(Permission.members_manage))]
KeyManager = Annotated[Principal, Depends(in_path_org(Permission.api_keys_manage))]
IdpManager = Annotated[Principal, Depends(in_path_org(Permission.idp_manage))]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_org(
    body: OrgIn, principal: CurrentPrincipal, conn: DbConn, services: ServicesDep
) -> OrgOut:
    return await service.create_org(conn, services.settings, principal, body.name)


@router.get("/{org_id}")
async def get_org(org_id: UUID, principal: OrgReader, conn: DbConn) -> OrgOut:
    return await service.get_org(conn, org_id)


@router.patch("/{org_id}")
async def update_org(org_id: UUID, body: OrgIn, principal: OrgEditor, conn: DbConn) -> OrgOut:
    return await service.rename_org(conn, principal, body.name)


@router.delete("/{org_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_org(org_id: UUID, principal: OrgDeleter, conn: DbConn) -> Response:
    await service.delete_org(conn, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{org_id}/members")
async def list_members(org_id: UUID, principal: MemberReader, conn: DbConn) -> MemberList:
    return MemberList(items=await service.list_members(conn, principal))


@router.post("/{org_id}/members", status_code=status.HTTP_201_CREATED)
async def invite_member(
    org_id: UUID, body: MemberIn, principal: MemberManager, conn: DbConn, services: ServicesDep
) -> InvitationOut:
    """Invite an address: it is mailed a single-use link (PUBLIC_URL/invite/<token>), which the
    invited person accepts signed in with that address verified."""
    return await service.invite_member(conn, services.settings, principal, body)


@router.get("/{org_id}/invitations")
async def list_invitations(org_id: UUID, principal: MemberManager, conn: DbConn) -> InvitationList:
    """The org's open invitations, expired ones included (owners and admins)."""
    return InvitationList(items=await service.list_invitations(conn, principal))


@router.delete("/{org_id}/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_invitation(
    org_id: UUID, invitation_id: UUID, principal: MemberManager, conn: DbConn
) -> Response:
    """Revoke an open invitation: its link stops working (audited). Admins revoke only the
    roles they could grant."""
    await service.revoke_invitation(conn, principal, invitation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@invitations.post("/accept")
async def accept_invitation(
    body: InvitationAcceptIn, principal: CurrentPrincipal, conn: DbConn
) -> OrgMembershipOut:
    """Join the org with the token from the mailed link: signed in as a person (not an API
    key) whose verified email is the invited address. Works once, until it expires."""
    return await service.accept_invitation(conn, principal, body.token)


@router.get("/{org_id}/oidc-binding")
async def get_oidc_binding(org_id: UUID, principal: IdpManager, conn: DbConn) -> OidcBindingOut:
    """Which identity provider's org claim names this org, and the highest role it grants."""
    return await service.get_oidc_binding(conn, principal)


@router.put("/{org_id}/oidc-binding")
async def put_oidc_binding(
    org_id: UUID, body: OidcBindingIn, principal: IdpManager, conn: DbConn
) -> OidcBindingOut:
    """Accept org and role claims from this identity provider (``iss``) when the org claim has
    this value, granting at most ``max_role``. Owners only; audited."""
    return await service.put_oidc_binding(conn, principal, body)


@router.delete("/{org_id}/oidc-binding", status_code=status.HTTP_204_NO_CONTENT)
async def delete_oidc_binding(org_id: UUID, principal: IdpManager, conn: DbConn) -> Response:
    """Stop accepting the identity provider's org and role claims for this org (audited)."""
    await service.delete_oidc_binding(conn, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/{org_id}/members/{user_id}")
async def change_member_role(
    org_id: UUID, user_id: UUID, body: MemberPatch, principal: MemberManager, conn: DbConn
) -> MemberOut:
    return await service.change_role(conn, principal, user_id, body.role)


@router.delete("/{org_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    org_id: UUID, user_id: UUID, principal: MemberReader, conn: DbConn
) -> Response:
    # Members may remove themselves (leave); removing others needs members:manage, which the
    # service checks together with the roles involved.
    await service.remove_member(conn, principal, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{org_id}/api-keys")
async def list_api_keys(org_id: UUID, principal: KeyManager, conn: DbConn) -> ApiKeyList:
    return ApiKeyList(items=await service.list_api_keys(conn, principal))


@router.post("/{org_id}/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    org_id: UUID, body: ApiKeyIn, principal: KeyManager, conn: DbConn
) -> ApiKeyCreated:
    return await service.create_api_key(conn, principal, body)


@router.delete("/{org_id}/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    org_id: UUID, key_id: UUID, principal: KeyManager, conn: DbConn
) -> Response:
    await service.revoke_api_key(conn, principal, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
