"""HTTP for accounts: signup, login, logout, me."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status

from app.auth import repository as repo
from app.auth import service
from app.auth.deps import CurrentPrincipal
from app.auth.login_throttle import login_attempt
from app.auth.principal import AuthKind
from app.auth.schemas import (
    LoginIn,
    LoginOut,
    MeOut,
    OrgMembershipOut,
    SignupIn,
    SignupOut,
    UserOut,
)
from app.kit.db import set_tenant
from app.kit.deps import DbConn, ServicesDep
from app.kit.errors import ValidationError
from app.kit.ratelimit import rate_limit

router = APIRouter(prefix="/api", tags=["auth"])

# Anonymous endpoints count per client IP (behind trusted proxies, the forwarded address).
PerClientIp = Depends(rate_limit("anonymous"))


@router.post(
    "/auth/signup",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(rate_limit("signup"))],
)
async def signup(body: SignupIn, conn: DbConn, services: ServicesDep) -> SignupOut:
    return await service.signup(conn, services.settings, body)


@router.post("/auth/login")
async def login(body: LoginIn, request: Request, conn: DbConn, services: ServicesDep) -> LoginOut:
    # Failed logins are limited per client IP (and email); an account's failures from
    # anywhere only slow its checks down, so nobody can lock its owner out.
    async with login_attempt(request, services.settings, body.email):
        return await service.login(conn, services.settings, body.email, body.password)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(principal: CurrentPrincipal, conn: DbConn) -> Response:
    if principal.session_id is None:
        raise ValidationError("Only session tokens log out; revoke API keys instead.")
    await service.logout(conn, principal.session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me")
async def me(principal: CurrentPrincipal, conn: DbConn) -> MeOut:
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
        from app.orgs.repository import get_org

        row = await get_org(conn, principal.org_id)
        if row is not None:
            current = OrgMembershipOut(id=row["id"], name=row["name"], role=principal.role)
    return MeOut(
        auth=principal.kind.value,
        user=UserOut.model_validate(user) if user else None,
        org=current,
        orgs=orgs if orgs else ([current] if current else []),
        api_key_id=principal.key_id,
    )
