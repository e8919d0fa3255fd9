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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg.rows import DictRow

from app.auth.principal import Principal
from app.auth.rbac import Permission, Scope, scope_of
from app.chat import repository as chat_repo
from app.chat.service import person
from app.documents import repository as documents_repo
from app.documents.schemas import DocumentOut
from app.kit.audit import write_audit
from app.kit.db import Conn, fetch_one, set_tenant
from app.kit.errors import AuthorizationError, NotFoundError
from app.kit.services import Services
from app.kit.storage import ObjectStore
from app.recordings import repository as recordings_repo
from app.settings import Settings
from app.shares import repository as repo
from app.shares.schemas import (
    ResourceType,
    SharedConversation,
    SharedMessage,
    SharedPage,
    SharedRecording,
    ShareIn,
    ShareList,
    ShareOut,
)
from app.transcripts import repository as transcripts_repo
from app.transcripts.schemas import SegmentOut, TranscriptOut

SHARE_ID_BYTES = 24  # 32 characters of token_urlsafe
GONE = "This link has expired, was revoked, or never existed."
SHARED_MESSAGES = 1000


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
    """Who owns the resource, for the roles' "own"; 404 when the caller cannot see it."""
    org = principal.org
    if resource_type is ResourceType.recording:
        recording = await recordings_repo.get(conn, org, resource_id)
        if recording is None:
            raise NotFoundError("No such recording.")
        owner: UUID | None = recording["created_by"]
        return owner
    if resource_type is ResourceType.document:
        document = await repo.document_of(conn, org, resource_id)
        if document is None:
            raise NotFoundError("No such document (a recording has one once it is ready).")
        creator: UUID | None = document["created_by"]
        return creator
    conversation = await chat_repo.get_conversation(conn, org, person(principal), resource_id)
    if conversation is None:
        raise NotFoundError("No such conversation.")
    return principal.user_id


async def _audit(conn: Conn, principal: Principal, action: str, row: DictRow) -> None:
    await write_audit(
        conn,
        org_id=principal.org,
        actor_user_id=principal.user_id,
        actor_key_id=principal.key_id,
        action=action,
        target_type="share",
        target_id=row["id"],
        data={"resource_type": row["resource_type"], "resource_id": str(row["resource_id"])},
    )


async def create_share(
    conn: Conn, settings: Settings, principal: Principal, body: ShareIn
) -> ShareOut:
    owner = await _owner_of(conn, principal, body.resource_type, body.resource_id)
    if not principal.can(Permission.share, owner):
        raise AuthorizationError(f"Your role ({principal.role}) may share only what you created.")
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
    await _audit(conn, principal, "share.create", row)
    return _out(row, settings)


async def list_shares(
    conn: Conn, settings: Settings, principal: Principal, resource_id: UUID | None
) -> ShareList:
    """Live links the caller manages: all of the org's for owners and admins, one's own for
    contributors. Links to other people's conversations are theirs alone to see."""
    everyone = (
        principal.role is not None and scope_of(principal.role, Permission.share) is Scope.ANY
    )
    rows = await repo.active(
        conn,
        principal.org,
        resource_id=resource_id,
        created_by=None if everyone else person(principal),
    )
    return ShareList(
        items=[
            _out(row, settings)
            for row in rows
            if row["resource_type"] != ResourceType.conversation
            or row["created_by"] == principal.user_id
        ]
    )


async def revoke_share(conn: Conn, principal: Principal, share_id: str) -> None:
    row = await repo.get_live(conn, principal.org, share_id)
    if row is None:
        raise NotFoundError("No such share.")
    if not principal.can(Permission.share, row["created_by"]):
        raise AuthorizationError(f"Your role ({principal.role}) may revoke only your own links.")
    await repo.revoke(conn, principal.org, share_id)
    await _audit(conn, principal, "share.revoke", row)


# -- the public side -----------------------------------------------------------------------------


async def _resolve(conn: Conn, share_id: str) -> DictRow:
    share = await repo.resolve(conn, share_id)
    if share is None:
        raise NotFoundError(GONE)
    await set_tenant(conn, org_id=share["org_id"], user_id=None)
    return share


async def _transcript(conn: Conn, org_id: UUID, recording_id: UUID) -> TranscriptOut | None:
    row = await transcripts_repo.get_transcript(conn, org_id, recording_id)
    if row is None:
        return None
    segments = await transcripts_repo.get_segments(conn, org_id, row["id"])
    return TranscriptOut(
        language=row["language"],
        text=row["text"],
        segments=[SegmentOut.model_validate(s) for s in segments],
    )


async def _document(conn: Conn, org_id: UUID, recording_id: UUID) -> DocumentOut | None:
    row = await documents_repo.get_document(conn, org_id, recording_id)
    return DocumentOut.model_validate(row) if row else None


async def public_page(services: Services, share_id: str) -> SharedPage:
    async with services.db.transaction() as conn:
        share = await _resolve(conn, share_id)
        org_id, resource_id = share["org_id"], share["resource_id"]
        kind = ResourceType(share["resource_type"])
        page: dict[str, Any] = {"resource_type": kind, "expires_at": share["expires_at"]}
        if kind is ResourceType.conversation:
            conversation = await fetch_one(
                conn,
                "SELECT id, title, created_at FROM conversations WHERE org_id = %s AND id = %s",
                (org_id, resource_id),
            )
            if conversation is None:
                raise NotFoundError(GONE)
            messages = await chat_repo.list_messages(
                conn, org_id, resource_id, limit=SHARED_MESSAGES, after=None
            )
            page["conversation"] = SharedConversation(
                title=conversation["title"],
                created_at=conversation["created_at"],
                messages=[SharedMessage.model_validate(m) for m in messages],
            )
            return SharedPage(**page)
        if kind is ResourceType.document:
            document = await repo.document_of(conn, org_id, resource_id)
            if document is None:
                raise NotFoundError(GONE)
            recording_id = document["recording_id"]
        else:
            recording_id = resource_id
        recording = await recordings_repo.get(conn, org_id, recording_id)
        if recording is None:
            raise NotFoundError(GONE)
        page["recording"] = SharedRecording.model_validate(recording)
        page["document"] = await _document(conn, org_id, recording_id)
        if kind is ResourceType.recording:
            page["transcript"] = await _transcript(conn, org_id, recording_id)
            if recording["media_key"]:
                base = services.settings.public_url.rstrip("/")
                page["media_url"] = f"{base}/s/{share_id}/media"
        return SharedPage(**page)


async def public_media(
    services: Services, store: ObjectStore, share_id: str
) -> tuple[str | None, Path | None, str | None]:
    """(content type, local path or None, presigned URL or None) of a shared recording's media."""
    async with services.db.transaction() as conn:
        share = await _resolve(conn, share_id)
        if share["resource_type"] != ResourceType.recording:
            raise NotFoundError("This link shares no media.")
        recording = await recordings_repo.get(conn, share["org_id"], share["resource_id"])
    if recording is None or not recording["media_key"]:
        raise NotFoundError(GONE)
    key = recording["media_key"]
    return recording["content_type"], store.local_path(key), await store.presigned_get(key)
