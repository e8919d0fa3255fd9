"""HTTP for accounts: signup, login, logout, me."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status

from app.auth import service
from app.auth.deps import CurrentPrincipal
from app.auth.login_throttle import login_attempt
from app.auth.schemas import (
    Accepted,
    LoginIn,
    LoginOut,
    MeOut,
    PasswordChangeIn,
    PasswordResetConfirmIn,
    PasswordResetIn,
    SignupIn,
    SignupOut,
    TokenIn,
)
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


@router.post("/auth/login", dependencies=[Depends(rate_limit("login"))])
async def login(body: LoginIn, request: Request, services: ServicesDep) -> LoginOut:
    # Failed logins are limited per client IP (and email); an account's failures from
    # anywhere only slow its checks down, so nobody can lock its owner out. The transaction
    # starts after that wait: a delayed attempt holds no pooled connection while it sleeps.
    async with (
        login_attempt(request, services.settings, body.email),
        services.db.transaction() as conn,
    ):
        return await service.login(conn, services.settings, body.email, body.password)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(principal: CurrentPrincipal, conn: DbConn) -> Response:
    if principal.session_id is None:
        raise ValidationError("Only session tokens log out; revoke API keys instead.")
    await service.logout(conn, principal.session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/auth/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_all(principal: CurrentPrincipal, conn: DbConn) -> Response:
    """Sign out everywhere: every session of the caller ends, this one included."""
    await service.logout_everywhere(conn, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/auth/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(
    body: PasswordChangeIn,
    request: Request,
    principal: CurrentPrincipal,
    conn: DbConn,
    services: ServicesDep,
) -> Response:
    """Change the password (the current one is required); every other session ends."""
    email = await service.session_email(conn, principal)
    # A stolen session guessing the current password meets the login's failure limits.
    async with login_attempt(request, services.settings, email):
        await service.change_password(conn, services.settings, principal, body.old, body.new)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/auth/verify", status_code=status.HTTP_204_NO_CONTENT)
async def verify_email(body: TokenIn, principal: CurrentPrincipal, conn: DbConn) -> Response:
    """Prove the account's email with the token from the mailed link (single use), signed in
    to that account."""
    await service.verify_email(conn, principal, body.token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/verify/resend",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(rate_limit("password_reset"))],
)
async def resend_verification(principal: CurrentPrincipal, conn: DbConn) -> Accepted:
    """Mail a new verification link (the earlier one stops working). Limited like password
    resets, per client IP: each request sends a message."""
    await service.resend_verification(conn, principal)
    return Accepted(detail="A new verification link is on its way.")


@router.post(
    "/auth/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(rate_limit("password_reset"))],
)
async def request_password_reset(body: PasswordResetIn, conn: DbConn) -> Accepted:
    """Mail a reset link. The answer is the same whether or not the address has an account."""
    await service.request_password_reset(conn, body.email)
    return Accepted(detail="If this address has an account, a reset link is on its way.")


@router.post(
    "/auth/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    # Not the reset's own budget: a person retrying a refused password must not spend the
    # office's allowance for reset mails. The 256-bit token is the protection.
    dependencies=[PerClientIp],
)
async def confirm_password_reset(
    body: PasswordResetConfirmIn, conn: DbConn, services: ServicesDep
) -> Response:
    """Set a new password with the mailed token; verifies the email and ends every session."""
    await service.reset_password(conn, services.settings, body.token, body.password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me")
async def me(principal: CurrentPrincipal, conn: DbConn) -> MeOut:
    return await service.me(conn, principal)
