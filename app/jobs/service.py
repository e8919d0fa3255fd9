"""Job status: a recording's pipeline job as its org sees it."""

from __future__ import annotations

from app.auth.principal import Principal
from app.jobs import repository
from app.jobs.schemas import JobOut
from app.kit.db import Conn
from app.kit.errors import NotFoundError


async def get_job(conn: Conn, principal: Principal, job_id: int) -> JobOut:
    row = await repository.get_job(conn, principal.org, job_id)
    if row is None:
        raise NotFoundError("No such job.")
    return JobOut.model_validate(row)
