"""The mail job: compose one message in a short transaction (its token made and hashed there),
commit, then send it. A failed send raises, and the job is retried with backoff; the retry makes
a new token, so only the link that was last mailed works."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never
from uuid import UUID

from app.auth import service as auth_service
from app.jobs.queue import MailKind
from app.kit.db import Database
from app.mail.sender import Mailer
from app.orgs import service as orgs_service
from app.settings import Settings


@dataclass(frozen=True)
class MailDeps:
    settings: Settings
    db: Database
    mailer: Mailer


async def deliver(deps: MailDeps, kind: MailKind, args: dict[str, Any]) -> bool:
    """Send the mail ``kind`` describes; False when there is nothing to send (an unknown
    address asking for a reset, an invitation revoked or a user verified before the job ran)."""
    settings = deps.settings
    async with deps.db.transaction() as conn:
        match kind:
            case MailKind.verify_email:
                user_id = UUID(args["user_id"])
                message = await auth_service.verification_mail(conn, settings, user_id)
            case MailKind.password_reset:
                message = await auth_service.password_reset_mail(conn, settings, args["email"])
            case MailKind.password_changed:
                user_id = UUID(args["user_id"])
                message = await auth_service.password_changed_mail(conn, settings, user_id)
            case MailKind.invitation:
                message = await orgs_service.invitation_mail(
                    conn,
                    settings,
                    org_id=UUID(args["org_id"]),
                    invitation_id=UUID(args["invitation_id"]),
                )
            case _:  # pragma: no cover - every kind is handled above
                assert_never(kind)
    if message is None:
        return False
    await deps.mailer.send(message)
    return True
