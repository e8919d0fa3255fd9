"""Authentication and authorisation as FastAPI dependencies.

``authenticate`` works out who is calling (API key, session token or OIDC JWT) and in which
org; ``require(permission)`` then checks the role. Every route depends on one of them, and on
the same per-request transaction, whose tenant settings they set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated
from uuid import UUID

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import repository as repo
from app.auth.oidc import OidcIdentity, OidcVerifier
from app.auth.principal import AuthKind, Principal, principals
from app.auth.rbac import Permission, Role, scope_of
from app.auth.tokens import API_KEY_PREFIX, SESSION_PREFIX, token_digest
from app.kit.db import Conn, set_tenant
from app.kit.deps import DbConn, get_services
from app.kit.errors import AuthenticationError, AuthorizationError, NotFoundError, ValidationError
from app.kit.ratelimit import enforce_caller

ORG_HEADER = "X-Record-Org"

# Documents the scheme in OpenAPI (every operation that depends on it says it needs a bearer
# token); parsing and the 401s stay ours, hence auto_error=False.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An org API key (rk_...), a session token (rs_...) or an OIDC JWT.",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _parse_org(value: str, source: str) -> UUID:
    try:
        return UUID(value)
    except ValueError as exc:
        raise ValidationError(f"{source} must be an org id (a UUID).") from exc


def _requested_org(request: Request) -> UUID | None:
    header = request.headers.get(ORG_HEADER)
    if header:
        return _parse_org(header, ORG_HEADER)
    path_org = request.path_params.get("org_id")
    if path_org:
        return _parse_org(str(path_org), "The org id in the path")
    return None


def _oidc_verifier(request: Request) -> OidcVerifier | None:
    services = get_services(request)
    verifier = services.extras.get("oidc")
    if verifier is None and services.settings.oidc_jwks_url:
        verifier = services.extras["oidc"] = OidcVerifier(services.settings)
    return verifier


async def _identify(request: Request, conn: Conn, token: str) -> Principal:
    if token.startswith((API_KEY_PREFIX, SESSION_PREFIX)):
        digest = token_digest(token)
        cached = principals.get(digest)
        if cached is not None:
            return cached
        generation = principals.generation  # before the query: see PrincipalCache
        if token.startswith(API_KEY_PREFIX):
            principal = await _key_principal(conn, digest)
            principals.put(digest, principal, generation=generation)
        else:
            principal, expires_at = await _session_principal(conn, digest)
            principals.put(digest, principal, generation=generation, valid_until=expires_at)
        return principal
    if token.count(".") == 2:
        verifier = _oidc_verifier(request)
        if verifier is None:
            raise AuthenticationError("OIDC tokens are not accepted by this server.")
        return await _oidc_principal(conn, await verifier.verify(token))
    raise AuthenticationError("The bearer token is not one this server issues.")


async def _key_principal(conn: Conn, digest: bytes) -> Principal:
    key = await repo.authenticate_api_key(conn, digest)
    if key is None:
        raise AuthenticationError("The API key is unknown or revoked.")
    return Principal(
        kind=AuthKind.api_key,
        user_id=key["created_by"],
        org_id=key["org_id"],
        role=Role(key["role"]),
        key_id=key["key_id"],
    )


async def _session_principal(conn: Conn, digest: bytes) -> tuple[Principal, datetime]:
    session = await repo.authenticate_session(conn, digest)
    if session is None:
        raise AuthenticationError("The session has expired or was logged out; log in again.")
    principal = Principal(
        kind=AuthKind.session, user_id=session["user_id"], session_id=session["session_id"]
    )
    return principal, session["expires_at"]


async def _oidc_principal(conn: Conn, identity: OidcIdentity) -> Principal:
    from app.auth.service import oidc_user

    user_id, org_id, role = await oidc_user(conn, identity)
    return Principal(kind=AuthKind.oidc, user_id=user_id, org_id=org_id, role=role)


async def authenticate(request: Request, conn: DbConn, _bearer: Bearer = None) -> Principal:
    """Who is calling. The org is resolved too when the request names one (or a key implies it)."""
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError("Send 'Authorization: Bearer <API key or session token>'.")
    principal = await _identify(request, conn, token)
    requested = _requested_org(request)
    if principal.kind is AuthKind.api_key or principal.org_id is not None:
        # The credential fixes the org: a request for another org's resources finds nothing.
        if requested is not None and requested != principal.org_id:
            raise NotFoundError("No such org.")
        org_id, role = principal.org_id, principal.role
    else:
        assert principal.user_id is not None
        org_id, role = await _session_org(conn, principal.user_id, requested)
    principal = Principal(
        kind=principal.kind,
        user_id=principal.user_id,
        org_id=org_id,
        role=role,
        key_id=principal.key_id,
        session_id=principal.session_id,
    )
    await set_tenant(conn, org_id=org_id, user_id=principal.user_id, key_id=principal.key_id)
    structlog.contextvars.bind_contextvars(
        org_id=str(org_id) if org_id else None,
        user_id=str(principal.user_id) if principal.user_id else None,
    )
    request.state.principal = principal
    # Every authenticated request counts against the caller's `api` limit (per user, or per
    # key when a key has no user); a 429 here stops the route before it does any work.
    await enforce_caller(request, "api", principal)
    return principal


async def _session_org(
    conn: Conn, user_id: UUID, requested: UUID | None
) -> tuple[UUID | None, Role | None]:
    await set_tenant(conn, org_id=None, user_id=user_id)
    if requested is None:
        orgs = await repo.user_orgs(conn, user_id)
        if len(orgs) != 1:
            return None, None
        return orgs[0]["id"], Role(orgs[0]["role"])
    role = await repo.membership_role(conn, org_id=requested, user_id=user_id)
    if role is None:
        raise NotFoundError("No such org.")
    return requested, Role(role)


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency that resolves the caller's org and checks the role grants ``permission``.

    A role that holds the permission only on its own resources passes here; the service then
    checks ownership of the resource it touches.
    """

    async def dependency(principal: CurrentPrincipal) -> Principal:
        return _check_permission(principal, permission)

    dependency.__name__ = f"require_{permission.name}"
    return dependency


def _check_permission(principal: Principal, permission: Permission) -> Principal:
    if principal.org_id is None or principal.role is None:
        raise ValidationError(
            f"Say which org this request is for: send the '{ORG_HEADER}' header "
            "(GET /api/me lists your orgs)."
        )
    if scope_of(principal.role, permission) is None:
        raise AuthorizationError(f"Your role ({principal.role}) does not allow {permission.value}.")
    return principal


def require_detached(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """``require`` for long requests (uploads): authenticate in a short transaction of its own
    instead of holding a pooled connection for the whole request. The route opens its own
    transaction when it has something to write."""

    async def dependency(request: Request, _bearer: Bearer = None) -> Principal:
        async with get_services(request).db.transaction() as conn:
            principal = await authenticate(request, conn)
        return _check_permission(principal, permission)

    dependency.__name__ = f"require_detached_{permission.name}"
    return dependency
