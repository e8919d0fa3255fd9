"""HTTP for search."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.auth.deps import require_detached
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.kit.deps import ServicesDep
from app.kit.ratelimit import Decision, rate_limit
from app.search import service
from app.search.schemas import SearchIn, SearchOut

router = APIRouter(prefix="/api", tags=["search"])

# Detached: the query is embedded over HTTP, and no pooled connection waits on that.
Searcher = Annotated[Principal, Depends(require_detached(Permission.recordings_read))]
SearchLimit = Annotated[Decision | None, Depends(rate_limit("search"))]


@router.post("/search")
async def search(
    body: SearchIn, principal: Searcher, _limit: SearchLimit, services: ServicesDep
) -> SearchOut:
    """Search the org's transcripts by meaning (``vector``), by words (``keyword``, web-search
    syntax: quotes, ``or``, ``-word``) or both (``hybrid``, the default). Each hit is a passage
    with the moment it was said (``start``/``end`` seconds)."""
    return await service.search(services, principal, body)
