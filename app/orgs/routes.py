"""HTTP for orgs, members and API keys. Every route states the permission it needs."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response, status

from app.auth.deps import CurrentPrincipal, require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.auth.schemas import OrgOut
from app.kit.deps import DbConn
from app.orgs import service
from app.orgs.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    MemberIn,
    MemberList,
    MemberOut,
    MemberPatch,
    OrgIn,
)

router = APIRouter(prefix="/api/orgs", tags=["orgs"])

OrgReader = Annotated[Principal, Depends(require(Permission.org_read))]
OrgEditor = Annotated[Principal, Depends(require(Permission.org_update))]
OrgDeleter = Annotated[Principal, Depends(require(Permission.org_delete))]
MemberReader = Annotated[Principal, Depends(require(Permission.members_read))]
MemberManager = Annotated[Principal, Depends(require(Permission.members_manage))]
KeyManager = Annotated[Principal, Depends(require(Permission.api_keys_manage))]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_org(body: OrgIn, principal: CurrentPrincipal, conn: DbConn) -> OrgOut:
    return await service.create_org(conn, principal, body.name)


@router.get("/{org_id}")
async def get_org(org_id: UUID, principal: OrgReader, conn: DbConn) -> OrgOut:
    service.ensure_path_org(principal, org_id)
    return await service.get_org(conn, org_id)


@router.patch("/{org_id}")
async def update_org(org_id: UUID, body: OrgIn, principal: OrgEditor, conn: DbConn) -> OrgOut:
    service.ensure_path_org(principal, org_id)
    return await service.rename_org(conn, principal, body.name)


@router.delete("/{org_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_org(org_id: UUID, principal: OrgDeleter, conn: DbConn) -> Response:
    service.ensure_path_org(principal, org_id)
    await service.delete_org(conn, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{org_id}/members")
async def list_members(org_id: UUID, principal: MemberReader, conn: DbConn) -> MemberList:
    service.ensure_path_org(principal, org_id)
    return MemberList(items=await service.list_members(conn, principal))


@router.post("/{org_id}/members", status_code=status.HTTP_201_CREATED)
async def add_member(
    org_id: UUID, body: MemberIn, principal: MemberManager, conn: DbConn
) -> MemberOut:
    service.ensure_path_org(principal, org_id)
    return await service.add_member(conn, principal, body)


@router.patch("/{org_id}/members/{user_id}")
async def change_member_role(
    org_id: UUID, user_id: UUID, body: MemberPatch, principal: MemberManager, conn: DbConn
) -> MemberOut:
    service.ensure_path_org(principal, org_id)
    return await service.change_role(conn, principal, user_id, body.role)


@router.delete("/{org_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    org_id: UUID, user_id: UUID, principal: MemberReader, conn: DbConn
) -> Response:
    # Members may remove themselves (leave); removing others needs members:manage, which the
    # service checks together with the roles involved.
    service.ensure_path_org(principal, org_id)
    await service.remove_member(conn, principal, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{org_id}/api-keys")
async def list_api_keys(org_id: UUID, principal: KeyManager, conn: DbConn) -> ApiKeyList:
    service.ensure_path_org(principal, org_id)
    return ApiKeyList(items=await service.list_api_keys(conn, principal))


@router.post("/{org_id}/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    org_id: UUID, body: ApiKeyIn, principal: KeyManager, conn: DbConn
) -> ApiKeyCreated:
    service.ensure_path_org(principal, org_id)
    return await service.create_api_key(conn, principal, body)


@router.delete("/{org_id}/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    org_id: UUID, key_id: UUID, principal: KeyManager, conn: DbConn
) -> Response:
    service.ensure_path_org(principal, org_id)
    await service.revoke_api_key(conn, principal, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
