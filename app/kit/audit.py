"""The audit log: who changed members, roles, keys and shares, and when."""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from psycopg.types.json import Jsonb

from app.kit.context import current_request_id
from app.kit.db import Conn, execute


async def write_audit(
    conn: Conn,
    *,
    org_id: UUID,
    actor_user_id: UUID | None,
    actor_key_id: UUID | None,
    action: str,
    target_type: str,
    target_id: str | UUID | None,
    data: dict[str, Any] | None = None,
) -> None:
    await execute(
        conn,
        """
        INSERT INTO audit_log
            (org_id, actor_user_id, actor_key_id, action, target_type, target_id, data, request_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            org_id,
            actor_user_id,
            actor_key_id,
            action,
            target_type,
            str(target_id) if target_id is not None else None,
            Jsonb(data or {}),
            current_request_id(),
        ),
    )


class Actor(Protocol):
    """Who did it: a request's principal (org, and the user and key it acted as)."""

    @property
    def org(self) -> UUID: ...

    @property
    def user_id(self) -> UUID | None: ...

    @property
    def key_id(self) -> UUID | None: ...


async def audit_by(
    conn: Conn,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | UUID | None,
    **data: Any,
) -> None:
    """``write_audit`` for what a request's caller did, in the caller's org."""
    await write_audit(
        conn,
        org_id=actor.org,
        actor_user_id=actor.user_id,
        actor_key_id=actor.key_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        data=data,
    )
