"""HTTP for chat and conversations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.auth.deps import require, require_detached
from app.auth.principal import Principal
from app.auth.rbac import Permission
from app.chat import service
from app.chat.schemas import ChatIn, ConversationOut, ConversationPage, MessagePage
from app.kit.deps import DbConn, ServicesDep
from app.kit.pagination import Cursor, Limit
from app.kit.ratelimit import Decision, rate_limit

router = APIRouter(prefix="/api", tags=["chat"])

# Detached: the answer streams for seconds, and no pooled connection waits on it.
Chatter = Annotated[Principal, Depends(require_detached(Permission.conversations))]
ChatLimit = Annotated[Decision | None, Depends(rate_limit("chat"))]
Member = Annotated[Principal, Depends(require(Permission.conversations))]


async def accepted_turn(
    body: ChatIn, principal: Chatter, _limit: ChatLimit, services: ServicesDep
) -> service.Turn:
    """Everything that can refuse the request, before the stream starts."""
    return await service.start_turn(services, principal, body)


@router.post(
    "/chat/stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-sent events: conversation, token (many), citations, done; "
            "or error, after which the stream ends."
        }
    },
)
async def chat_stream(
    turn: Annotated[service.Turn, Depends(accepted_turn)], services: ServicesDep
) -> AsyncIterator[ServerSentEvent]:
    """Ask the org's recordings a question. The answer streams as it is written and cites
    passages as [n]; the ``citations`` event maps each n to a recording and its moment."""
    async for event in service.answer(services, turn):
        yield event


@router.get("/conversations")
async def list_conversations(
    principal: Member, conn: DbConn, limit: Limit = 20, cursor: Cursor = None
) -> ConversationPage:
    """Your conversations in this org, newest first."""
    return await service.list_conversations(conn, principal, limit=limit, cursor=cursor)


@router.get("/conversations/{conversation_id}")
async def get_conversation(
    conversation_id: UUID, principal: Member, conn: DbConn
) -> ConversationOut:
    return await service.get_conversation(conn, principal, conversation_id)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(conversation_id: UUID, principal: Member, conn: DbConn) -> Response:
    await service.delete_conversation(conn, principal, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/conversations/{conversation_id}/messages")
async def list_messages(
    conversation_id: UUID,
    principal: Member,
    conn: DbConn,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> MessagePage:
    """The conversation's messages, oldest first, each answer with its citations."""
    return await service.list_messages(conn, principal, conversation_id, limit=limit, cursor=cursor)
