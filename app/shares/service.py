"""Share rules: who may share what, and what a link shows to anyone who holds it.

A share id is 32 random URL-safe characters (192 bits): the link is the credential. Sharing
follows the roles table: owners and admins share any recording or document, contributors
their own; conversations are private, so only their owner shares them. Owners and admins may
revoke any link, contributors their own. Every create and revoke is audited.

The public page (``GET /s/{id}``) resolves the link before any tenant is known (a SECURITY
DEFINER look-up that ignores revoked and expired links), then reads as the link's org under
row-level security. It shows the resource and nothing of the org or its people.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg.rows import DictRow

from app.auth.principal import Principal
from app.auth.rbac import Permission, Scope, scope_of
from app.chat.service import lock_own_conversation, person, shared_conversation
from app.documents.service import find_document
from app.kit.db import Conn, set_tenant
from app.kit.errors import AuthorizationError, NotFoundError
from app.kit.pagination import decode_text_cursor, paginate
from app.kit.services import Services
from app.kit.storage import ObjectStore
from app.recordings.service import existing_recordings, recording_row
from app.settings import Settings
from app.shares import repository as repo
from app.shares.audit import audit_share
from app.shares.schemas import (
    ResourceType,
    SharedCitation,
    SharedConversation,
    SharedMessage,
    SharedPage,
    SharedRecording,
    ShareIn,
    ShareList,
    ShareOut,
)
from app.transcripts.service import find_transcript

SHARE_ID_BYTES = 24  # 32 characters of token_urlsafe
GONE = "This link has expired, was revoked, or never existed."
SHARED_MESSAGES = 1000
# A presigned media URL is a bearer credential of its own that outlives a revoked link, and a
# player that loses it asks /s/<id>/media again: five minutes bounds what a leaked URL gives.
PRESIGNED_SECONDS = 300


def _out(row: DictRow, settings: Settings) -> ShareOut:
    return ShareOut(
        share_id=row["id"],
        url=f"{settings.public_url.rstrip('/')}/s/{row['id']}",
        resource_type=ResourceType(row["resource_type"]),
        resource_id=row["resource_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


async def _owner_of(
    conn: Conn, principal: Principal, resource_type: ResourceType, resource_id: UUID
) -> UUID | None:
    """Who owns the resource, for the roles' "own"; 404 when the caller cannot see it. The
    resource's row stays locked (FOR KEY SHARE) until commit, so it cannot be deleted between
    this check and the share's insert: its delete waits, then takes the new link with it."""
    org = principal.org
    if resource_type is ResourceType.recording:
        recording = await repo.recording_owner(conn, org, resource_id)
        if recording is None:
            raise NotFoundError("No such recording.")
        owner: UUID | None = recording["created_by"]
        return owner
    if resource_type is ResourceType.document:
        document = await repo.document_of(conn, org, resource_id, lock=True)
        if document is None:
            raise NotFoundError("No such document (a recording has one once it is ready).")
        creator: UUID | None = document["created_by"]
        return creator
    await lock_own_conversation(conn, principal, resource_id)
    return principal.user_id


async def create_share(
    conn: Conn,
    settings: Settings,
    principal: Principal,
    body: ShareIn,
    *,
    charge: Callable[[], Awaitable[object]],
) -> ShareOut:
    """``charge`` counts the link against the org's ``share`` limit: called once the request
    is known to be allowed, so refused and malformed requests do not spend the org's quota."""
    owner = await _owner_of(conn, principal, body.resource_type, body.resource_id)
    if not principal.can(Permission.share, owner):
        raise AuthorizationError(f"Your role ({principal.role}) may share only what you created.")
    await charge()
    expires_at = datetime.now(UTC) + timedelta(seconds=body.expires_in) if body.expires_in else None
    row = await repo.insert(
        conn,
        share_id=secrets.token_urlsafe(SHARE_ID_BYTES),
        org_id=principal.org,
        resource_type=body.resource_type.value,
        resource_id=body.resource_id,
        created_by=principal.user_id,
        expires_at=expires_at,
    )
    await audit_share(conn, principal, "share.create", row)
    return _out(row, settings)


async def list_shares(
    conn: Conn,
    settings: Settings,
    principal: Principal,
    resource_id: UUID | None,
    *,
    limit: int,
    cursor: str | None,
) -> ShareList:
    """Live links the caller manages, newest first: all of the org's for owners and admins
    (who may revoke any, a departed colleague's conversation link included), one's own for
    contributors."""
    role = principal.role
    everyone = role is not None and scope_of(role, Permission.share) is Scope.ANY
    after = decode_text_cursor(cursor) if cursor else None
    rows = await repo.active(
        conn,
        principal.org,
        resource_id=resource_id,
        created_by=None if everyone else person(principal),
        limit=limit + 1,
        after=after,
    )
    return paginate(ShareList, rows, limit, lambda row: _out(row, settings))


async def revoke_share(conn: Conn, principal: Principal, share_id: str) -> None:
    row = await repo.get_live(conn, principal.org, share_id)
    if row is None:
        raise NotFoundError("No such share.")
    if not principal.can(Permission.share, row["created_by"]):
        raise AuthorizationError(f"Your role ({principal.role}) may revoke only your own links.")
    revoked = await repo.revoke(conn, principal.org, share_id)
    if revoked is None:  # revoked by someone else meanwhile
        raise NotFoundError("No such share.")
    await audit_share(conn, principal, "share.revoke", revoked)


# -- the public side -----------------------------------------------------------------------------


async def _resolve(conn: Conn, share_id: str) -> DictRow:
    share = await repo.resolve(conn, share_id)
    if share is None:
        raise NotFoundError(GONE)
    await set_tenant(conn, org_id=share["org_id"], user_id=None)
    return share


async def public_page(services: Services, share_id: str) -> SharedPage:
    async with services.db.transaction() as conn:
        share = await _resolve(conn, share_id)
        org_id, resource_id = share["org_id"], share["resource_id"]
        kind = ResourceType(share["resource_type"])
        page: dict[str, Any] = {"resource_type": kind, "expires_at": share["expires_at"]}
        if kind is ResourceType.conversation:
            shared = await shared_conversation(conn, org_id, resource_id, limit=SHARED_MESSAGES)
            if shared is None:
                raise NotFoundError(GONE)
            conversation, messages = shared
            cited = {UUID(str(c["recording_id"])) for m in messages for c in m["citations"] or []}
            # Citations of recordings deleted since are dropped with them.
            alive = await existing_recordings(conn, org_id, sorted(cited))
            page["conversation"] = SharedConversation(
                title=conversation["title"],
                created_at=conversation["created_at"],
                messages=[
                    SharedMessage(
                        role=m["role"],
                        content=m["content"],
                        created_at=m["created_at"],
                        citations=[
                            SharedCitation.model_validate(c)
                            for c in m["citations"] or []
                            if UUID(str(c["recording_id"])) in alive
                        ],
                    )
                    for m in messages
                ],
            )
            return SharedPage(**page)
        if kind is ResourceType.document:
            document = await repo.document_of(conn, org_id, resource_id)
            if document is None:
                raise NotFoundError(GONE)
            recording_id = document["recording_id"]
        else:
            recording_id = resource_id
        recording = await recording_row(conn, org_id, recording_id)
        if recording is None:
            raise NotFoundError(GONE)
        page["recording"] = SharedRecording.model_validate(recording)
        page["document"] = await find_document(conn, org_id, recording_id)
        if kind is ResourceType.recording:
            page["transcript"] = await find_transcript(conn, org_id, recording_id)
            if recording["media_key"]:
                base = services.settings.public_url.rstrip("/")
                page["media_url"] = f"{base}/s/{share_id}/media"
        return SharedPage(**page)


async def public_media(
    services: Services, store: ObjectStore, share_id: str
) -> tuple[str | None, Path | None, str | None]:
    """(content type, local path or None, presigned URL or None) of a shared recording's media.
    A presigned URL lives at most 5 minutes, and never past the link's own expiry."""
    async with services.db.transaction() as conn:
        share = await _resolve(conn, share_id)
        if share["resource_type"] != ResourceType.recording:
            raise NotFoundError("This link shares no media.")
        recording = await recording_row(conn, share["org_id"], share["resource_id"])
    if recording is None or not recording["media_key"]:
        raise NotFoundError(GONE)
    key = recording["media_key"]
    path = store.local_path(key)
    if path is not None and not path.is_file():  # deleted a moment ago, with its recording
        raise NotFoundError(GONE)
    lifetime = PRESIGNED_SECONDS
    if share["expires_at"] is not None:
        left = (share["expires_at"] - datetime.now(UTC)).total_seconds()
        lifetime = max(1, min(lifetime, int(left)))
    return recording["content_type"], path, await store.presigned_get(key, expires_in=lifetime)
