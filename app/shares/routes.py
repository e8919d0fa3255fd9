"""HTTP for share links: managing them (``/api/share``) and opening them (``/s/{id}``)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import DbConn, ServicesDep
from app.kit.pagination import Cursor, Limit
from app.kit.ratelimit import enforce_caller, rate_limit
from app.recordings.service import storage_of
from app.shares import service
from app.shares.schemas import SharedPage, ShareIn, ShareList, ShareOut

router = APIRouter(prefix="/api", tags=["shares"])
public = APIRouter(tags=["shares"])

Sharer = Annotated[Principal, Depends(require(Permission.share))]
ShareId = Annotated[str, Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# Nobody is signed in on a public page: counted per client IP, on a budget of its own (opening
# shared pages spends none of an address's signups or logins, nor they its pages).
PerClientIp = Depends(rate_limit("share_page"))
# The media apart, with more room: a player fetches it in many range requests.
PerClientIpMedia = Depends(rate_limit("media"))
PUBLIC_HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex, nofollow"}


@router.post("/share", status_code=status.HTTP_201_CREATED)
async def create_share(
    body: ShareIn, request: Request, principal: Sharer, conn: DbConn, services: ServicesDep
) -> ShareOut:
    """A link anyone can open to read the recording (transcript, document, media), the
    document, or the conversation (with its citations). Optionally expiring. Counts against
    the org's ``share`` limit once allowed (a refused request costs nothing)."""

    async def charge() -> object:
        return await enforce_caller(request, "share", principal, per="org")

    return await service.create_share(conn, services.settings, principal, body, charge=charge)


@router.get("/share")
async def list_shares(
    principal: Sharer,
    conn: DbConn,
    services: ServicesDep,
    *,
    resource_id: Annotated[UUID | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> ShareList:
    """Live links you manage, newest first (owners and admins: the org's; contributors:
    their own)."""
    return await service.list_shares(
        conn, services.settings, principal, resource_id, limit=limit, cursor=cursor
    )


@router.delete("/share/{share_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_share(share_id: ShareId, principal: Sharer, conn: DbConn) -> Response:
    await service.revoke_share(conn, principal, share_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@public.get("/s/{share_id}", dependencies=[PerClientIp])
async def open_share(share_id: ShareId, services: ServicesDep, response: Response) -> SharedPage:
    """What a share link shows, to anyone who holds it. Read-only."""
    response.headers.update(PUBLIC_HEADERS)
    return await service.public_page(services, share_id)


@public.get("/s/{share_id}/media", dependencies=[PerClientIpMedia], response_model=None)
async def open_shared_media(share_id: ShareId, services: ServicesDep) -> Response:
    """A shared recording's media: a short-lived signed URL (S3), or the file itself."""
    store = storage_of(services)
    content_type, path, url = await service.public_media(services, store, share_id)
    if url is not None:
        return RedirectResponse(
            url, status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers=PUBLIC_HEADERS
        )
    assert path is not None
    return FileResponse(
        path, media_type=content_type or "application/octet-stream", headers=PUBLIC_HEADERS
    )
