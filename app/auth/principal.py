"""Who is calling, in which org, with which role."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from app.auth.rbac import Permission, Role, Scope, scope_of


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
