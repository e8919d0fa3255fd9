"""The audit log: who changed members, roles, keys and shares, and when."""

from __future__ import annotations

from typing import Any
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
