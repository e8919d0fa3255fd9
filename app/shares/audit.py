"""Audit rows for share links: made, revoked, or ended with what they shared or who made them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.auth.principal import Principal
from app.kit.audit import audit_by


async def audit_share(
    conn: Any, principal: Principal, action: str, share: Mapping[str, Any], **data: object
) -> None:
    await audit_by(
        conn,
        principal,
        action,
        "share",
        share["id"],
        resource_type=share["resource_type"],
        resource_id=str(share["resource_id"]),
        **data,
    )


async def audit_ended(
    conn: Any, principal: Principal, shares: Iterable[Mapping[str, Any]], reason: str
) -> None:
    """``share.revoke`` rows for links that ended because of something else."""
    for share in shares:
        await audit_share(conn, principal, "share.revoke", share, reason=reason)
