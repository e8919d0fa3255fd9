"""Keyset (cursor) pagination: stable under inserts, one index range scan per page.

The cursor is an opaque, URL-safe encoding of the last row's (created_at, id); clients pass it
back unchanged. ``limit`` is capped at 100. A repository fetches ``limit + 1`` rows, and
``paginate`` turns them into a ``Page``: the extra row only says that there is a next page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from fastapi import Query
from pydantic import BaseModel

from app.kit.errors import ValidationError

MAX_PAGE = 100
T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size, at most 100.")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")]


def encode_cursor(created_at: datetime, row_id: UUID | str) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, parse_id: Callable[[str], T]) -> tuple[datetime, T]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created_at), parse_id(str(row_id))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError(
            "The cursor is not valid; pass next_cursor from the previous page unchanged."
        ) from exc


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    return _decode(cursor, UUID)


def _text_id(value: str) -> str:
    # PostgreSQL's text cannot hold NUL: a forged cursor carrying one was a 500 from the
    # database (found by schemathesis, issue 15), so it is an invalid cursor like any other.
    if "\x00" in value:
        raise ValueError("NUL in a cursor")
    return value


def decode_text_cursor(cursor: str) -> tuple[datetime, str]:
    """For rows whose id is text (share links)."""
    return _decode(cursor, _text_id)


class Page(BaseModel, Generic[T]):
    """One page of a list: its items, and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None


P = TypeVar("P", bound=Page[Any])
R = TypeVar("R", bound=Mapping[str, Any])


def paginate(page: type[P], rows: Sequence[R], limit: int, item: Callable[[R], Any]) -> P:
    """``rows`` as fetched with ``limit + 1``: the first ``limit`` become items; the cursor is
    the last shown row's (created_at, id) when there was one more."""
    last = rows[limit - 1] if len(rows) > limit else None
    return page(
        items=[item(row) for row in rows[:limit]],
        next_cursor=encode_cursor(last["created_at"], last["id"]) if last is not None else None,
    )
