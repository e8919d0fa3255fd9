"""Chat rules: ground each answer in the org's recordings, cite the moments, keep the thread.

A turn is two phases. Before the stream starts (so a refusal is an ordinary problem+json):
check the conversation and recordings, save the question, and retrieve the passages with the
search (hybrid, cached, tenant-scoped). Then the stream: the model's answer token by token,
the citations it made mapped back to recordings and seconds, and the answer saved. No pooled
connection is held while the model talks.

Events, in order: ``conversation`` (ids), ``token`` (many), ``citations``, ``done`` (the saved
answer's id); or ``error`` in place of what could not be done, after which the stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import structlog
from fastapi.sse import ServerSentEvent
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout

from app.ai.clients import Message, models_of
from app.ai.prompts import cited_numbers
from app.auth.principal import AuthKind, Principal
from app.chat import repository as repo
from app.chat.schemas import (
    ChatIn,
    Citation,
    ConversationOut,
    ConversationPage,
    MessageOut,
    MessagePage,
)
from app.kit.db import Conn
from app.kit.errors import (
    AppError,
    AuthorizationError,
    ExternalServiceError,
    NotFoundError,
    ServiceUnavailableError,
    ValidationError,
)
from app.kit.pagination import decode_cursor, paginate
from app.kit.security.text import plain_text
from app.kit.services import Services
from app.recordings.service import existing_recordings
from app.search import service as search
from app.search.schemas import SearchHit, SearchIn, SearchMode
from app.shares.audit import audit_ended

log = structlog.stdlib.get_logger(__name__)

HISTORY_MESSAGES = 10  # earlier turns the model sees
CONTEXT_PASSAGES = 6  # passages retrieved per question
TITLE_LENGTH = 80


@dataclass
class Turn:
    """A question accepted and saved, with what the answer may draw on."""

    org_id: UUID
    conversation_id: UUID
    question_id: UUID
    question: str
    passages: list[SearchHit]
    history: list[Message] = field(default_factory=list)


def person(principal: Principal) -> UUID:
    if principal.user_id is None:
        raise AuthorizationError(
            "Conversations belong to people, and this API key's creator is gone: use a key "
            "made by a member, or sign in."
        )
    return principal.user_id


def owner_of(principal: Principal) -> repo.Owner:
    """Whose conversations: the member's, and through an API key, that key's alone (a key
    acts for its maker, but must not read the maker's private conversations)."""
    key = principal.key_id if principal.kind is AuthKind.api_key else None
    return repo.Owner(person(principal), key)


def _title(message: str) -> str:
    try:
        title = plain_text(message, max_length=TITLE_LENGTH)
    except ValidationError:
        return "Conversation"
    return title if len(message) <= TITLE_LENGTH else title[: TITLE_LENGTH - 1].rstrip() + "…"


async def start_turn(services: Services, principal: Principal, body: ChatIn) -> Turn:
    org_id, owner = principal.org, owner_of(principal)
    user_id = owner.user_id
    asked = sorted(set(body.recording_ids)) if body.recording_ids else None
    async with services.db.transaction(org_id=org_id, user_id=user_id) as conn:
        if asked:
            known = await existing_recordings(conn, org_id, asked)
            if missing := [str(i) for i in asked if i not in known]:
                raise NotFoundError(f"No such recording in this org: {', '.join(missing[:5])}.")
        if body.conversation_id is not None:
            conversation = await repo.get_conversation(
                conn, org_id, owner, body.conversation_id, lock=True
            )
            if conversation is None:
                raise NotFoundError("No such conversation.")
            history = [
                Message(row["role"], row["content"])
                for row in await repo.recent_messages(
                    conn, org_id, conversation["id"], HISTORY_MESSAGES
                )
            ]
            stored = list(conversation["recording_ids"])
            scope: list[UUID] | None = asked
            if not asked and stored:
                # Recordings deleted since the conversation began are no longer searched; when
                # all of them are gone, nothing is (scope [], not None: not the whole org).
                scope = sorted(await existing_recordings(conn, org_id, stored))
        else:
            conversation = await repo.create_conversation(
                conn, org_id, owner, _title(body.message), asked or []
            )
            history, scope = [], asked
        question_id = await repo.add_message(
            conn, org_id, conversation["id"], role="user", content=body.message
        )
    passages: list[SearchHit] = []
    if scope is None or scope:
        query = SearchIn(
            query=body.message[:1000],
            limit=CONTEXT_PASSAGES,
            mode=SearchMode.hybrid,
            recording_ids=scope,
        )
        # Checked above; a recording deleted since then just has no passages left.
        passages = (await search.find_checked(services, org_id, query)).results
    return Turn(
        org_id=org_id,
        conversation_id=conversation["id"],
        question_id=question_id,
        question=body.message,
        passages=passages,
        history=history,
    )


def citations_of(answer: str, passages: Sequence[SearchHit]) -> list[Citation]:
    return [
        Citation(
            number=n,
            recording_id=passages[n - 1].recording_id,
            recording_title=passages[n - 1].recording_title,
            chunk_id=passages[n - 1].chunk_id,
            start=passages[n - 1].start,
            end=passages[n - 1].end,
            text=passages[n - 1].text,
        )
        for n in cited_numbers(answer)
        if 1 <= n <= len(passages)
    ]


def _event(name: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=data)


def _error(exc: AppError) -> ServerSentEvent:
    return _event(
        "error",
        {"status": exc.status_code, "code": exc.code, "title": exc.title, "detail": exc.detail},
    )


async def answer(services: Services, turn: Turn) -> AsyncIterator[ServerSentEvent]:
    yield _event(
        "conversation",
        {"conversation_id": str(turn.conversation_id), "message_id": str(turn.question_id)},
    )
    models = models_of(services)
    pieces: list[str] = []
    try:
        async for piece in models.chat.answer(
            turn.question, [p.text for p in turn.passages], history=turn.history
        ):
            pieces.append(piece)
            yield _event("token", {"text": piece})
    except AppError as exc:
        # The operator's detail (which server, which setting) goes to the log only.
        log.warning("chat answer failed", error=exc.detail)
        yield _error(
            ExternalServiceError(exc.code, "The model could not answer right now; ask again.")
            if isinstance(exc, ExternalServiceError)
            else exc
        )
        return
    text = "".join(pieces)
    citations = citations_of(text, turn.passages)
    yield _event("citations", {"citations": [c.model_dump(mode="json") for c in citations]})
    try:
        async with services.db.transaction(org_id=turn.org_id) as conn:
            message_id = await repo.add_message(
                conn,
                turn.org_id,
                turn.conversation_id,
                role="assistant",
                content=text,
                citations=[c.model_dump(mode="json") for c in citations],
                model=models.config.chat_model,
            )
    except psycopg.errors.ForeignKeyViolation:  # deleted while the answer was written
        yield _error(NotFoundError("The conversation was deleted; the answer was not kept."))
        return
    except (psycopg.Error, PoolTimeout) as exc:
        # The stream has started: a problem can no longer be the response, so it is the last
        # event. Logged with its stack, like any 5xx.
        log.exception("chat answer not saved", error=str(exc))
        yield _error(ServiceUnavailableError("The answer could not be saved; ask again."))
        return
    yield _event("done", {"message_id": str(message_id)})


# -- conversations -------------------------------------------------------------------------------


async def list_conversations(
    conn: Conn, principal: Principal, *, limit: int, cursor: str | None
) -> ConversationPage:
    after = decode_cursor(cursor) if cursor else None
    rows = await repo.list_conversations(
        conn, principal.org, owner_of(principal), limit=limit + 1, after=after
    )
    return paginate(ConversationPage, rows, limit, ConversationOut.model_validate)


async def get_conversation(
    conn: Conn, principal: Principal, conversation_id: UUID
) -> ConversationOut:
    row = await repo.get_conversation(conn, principal.org, owner_of(principal), conversation_id)
    if row is None:
        raise NotFoundError("No such conversation.")
    return ConversationOut.model_validate(row)


async def delete_conversation(conn: Conn, principal: Principal, conversation_id: UUID) -> None:
    ended = await repo.delete_conversation(
        conn, principal.org, owner_of(principal), conversation_id
    )
    if ended is None:
        raise NotFoundError("No such conversation.")
    await audit_ended(conn, principal, ended, "conversation deleted")


async def lock_own_conversation(conn: Conn, principal: Principal, conversation_id: UUID) -> None:
    """The caller's conversation, held (FOR KEY SHARE) until commit so it cannot be deleted
    meanwhile (a share of it is being made); 404 when it is not theirs."""
    row = await repo.get_conversation(
        conn, principal.org, owner_of(principal), conversation_id, lock=True
    )
    if row is None:
        raise NotFoundError("No such conversation.")


async def shared_conversation(
    conn: Conn, org_id: UUID, conversation_id: UUID, *, limit: int
) -> tuple[DictRow, list[DictRow]] | None:
    """A conversation and its first ``limit`` messages, as a share link shows them (the link's
    org is the tenant; its owner made the link)."""
    header = await repo.conversation_header(conn, org_id, conversation_id)
    if header is None:
        return None
    messages = await repo.list_messages(conn, org_id, conversation_id, limit=limit, after=None)
    return header, messages


async def list_messages(
    conn: Conn, principal: Principal, conversation_id: UUID, *, limit: int, cursor: str | None
) -> MessagePage:
    await get_conversation(conn, principal, conversation_id)  # yours, or 404
    after = decode_cursor(cursor) if cursor else None
    rows = await repo.list_messages(
        conn, principal.org, conversation_id, limit=limit + 1, after=after
    )
    return paginate(MessagePage, rows, limit, MessageOut.model_validate)
