"""Who is calling, in which org, with which role; and the short-lived cache of who a credential
names."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID

from app.auth.rbac import Permission, Role, Scope, scope_of
from app.kit.db import Conn, after_commit


class AuthKind(StrEnum):
    api_key = "api_key"
    session = "session"
    oidc = "oidc"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: AuthKind
    user_id: UUID | None
    org_id: UUID | None = None
    role: Role | None = None
    key_id: UUID | None = None
    session_id: UUID | None = None

    def can(self, permission: Permission, owner_id: UUID | None = None) -> bool:
        """May this caller use ``permission`` on a resource owned by ``owner_id``?"""
        if self.role is None:
            return False
        scope = scope_of(self.role, permission)
        if scope is Scope.ANY:
            return True
        return scope is Scope.OWN and owner_id is not None and owner_id == self.user_id

    @property
    def org(self) -> UUID:
        """The request's org; only call after ``require(...)`` has resolved it."""
        if self.org_id is None:  # pragma: no cover - guarded by the dependency
            raise RuntimeError("no org resolved for this request")
        return self.org_id


# How long a credential's look-up is reused within one process. Revoking a key, logging out,
# changing or removing a member and deleting an org forget every cached principal in the
# process that made the change, at once and again when its transaction commits; the other
# gunicorn workers (and other hosts) keep theirs for at most this long. Measured: the look-up
# was one database round trip of the five an authenticated read made (bench/request_cost.py).
PRINCIPAL_TTL_SECONDS = 3.0
PRINCIPAL_CACHE_SIZE = 10_000


class PrincipalCache:
    """Principals by their credential's digest, for a few seconds.

    ``generation`` guards against a look-up that raced a revocation: a caller reads it before
    its database query and ``put`` stores nothing if the cache was invalidated meanwhile, so a
    principal read before a revocation committed cannot outlive the commit here.
    """

    def __init__(
        self, ttl: float = PRINCIPAL_TTL_SECONDS, max_entries: int = PRINCIPAL_CACHE_SIZE
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, principal = entry
        if time.monotonic() >= expires:
            self._entries.pop(digest, None)
            return None
        return principal

    def put(
        self,
        digest: bytes,
        principal: Principal,
        *,
        generation: int,
        valid_until: datetime | None = None,
    ) -> None:
        """Keep ``principal`` unless the cache was invalidated since ``generation`` was read;
        never past ``valid_until`` (a session's expiry)."""
        if generation != self.generation or self.ttl <= 0:
            return
        ttl = self.ttl
        if valid_until is not None:
            ttl = min(ttl, (valid_until - datetime.now(UTC)).total_seconds())
            if ttl <= 0:
                return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # a flood of distinct credentials: start again, bounded
        self._entries[digest] = (time.monotonic() + ttl, principal)

    def invalidate(self) -> None:
        self.generation += 1
        self._entries.clear()


principals = PrincipalCache()


def forget_principals(conn: Conn) -> None:
    """A credential, membership or org changed in ``conn``'s transaction: no cached principal
    may be used from now on, nor one looked up before the change commits."""
    principals.invalidate()
    after_commit(conn, principals.invalidate)
