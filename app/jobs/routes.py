"""HTTP for job status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.auth.deps import require
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.jobs import service
from app.jobs.schemas import JobOut
from app.kit.deps import DbConn

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

Reader = Annotated[Principal, Depends(require(Permission.recordings_read))]


@router.get("/{job_id}")
async def get_job(
    job_id: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: Reader, conn: DbConn
) -> JobOut:
    return await service.get_job(conn, principal, job_id)
