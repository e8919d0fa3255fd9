"""Dependencies as named types: route signatures read like what they need."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from app.kit.db import Conn
from app.kit.services import Services
from app.settings import Settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_conn(request: Request) -> AsyncIterator[Conn]:
    """The request owns one transaction: committed when the route returns, rolled back on error.

    ``scope="function"`` makes FastAPI leave this dependency (commit) when the route function
    returns, *before* the response is sent: a client that got its 2xx can read what it wrote
    with its next request, and a failed commit is a failed request, never a 2xx. (FastAPI's
    default for ``yield`` dependencies is to finish them after the response.)
    """
    services = get_services(request)
    async with services.db.transaction() as conn:
        yield conn


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(lambda request: get_services(request).settings)]
DbConn = Annotated[Conn, Depends(get_conn, scope="function")]
