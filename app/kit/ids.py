"""Identifiers. UUIDv4 for rows: unguessable, so an id in a URL reveals nothing."""

from __future__ import annotations

from uuid import UUID, uuid4


def new_id() -> UUID:
    return uuid4()
