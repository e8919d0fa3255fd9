"""The long-lived things a process holds (pool, Redis client, settings), built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from app.kit.db import Database
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: Redis
    # Domain-owned singletons (the OIDC verifier, the rate limiter, storage) by name.
    extras: dict[str, Any] = field(default_factory=dict)
