"""Roles and permissions, exactly the table in DESIGN.md.

A permission is granted to a role either on ``ANY`` resource of the org or only on the
caller's ``OWN`` resources. Routes state the permission they need with ``require(...)``;
services check ownership with ``Principal.can(permission, owner_id)``.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Role(StrEnum):
    owner = "owner"
    admin = "admin"
    contributor = "contributor"
    reader = "reader"


class Scope(IntEnum):
    OWN = 1
    ANY = 2


class Permission(StrEnum):
    org_read = "org:read"
    org_update = "org:update"
    org_delete = "org:delete"
    billing = "org:billing"
    members_read = "members:read"
    members_manage = "members:manage"
    api_keys_manage = "api_keys:manage"
    recordings_read = "recordings:read"
    recordings_create = "recordings:create"
    recordings_write = "recordings:write"  # edit and delete
    share = "share:create"
    conversations = "conversations:use"
    documents_write = "documents:write"
    audit_read = "audit:read"
    idp_manage = "org:identity_provider"


_EVERYONE = {
    Permission.org_read: Scope.ANY,
    Permission.members_read: Scope.ANY,
    Permission.recordings_read: Scope.ANY,
    Permission.conversations: Scope.OWN,
}
_CONTRIBUTOR = {
    **_EVERYONE,
    Permission.recordings_create: Scope.ANY,
    Permission.recordings_write: Scope.OWN,
    Permission.share: Scope.OWN,
    Permission.documents_write: Scope.OWN,
}
_ADMIN = {
    **_CONTRIBUTOR,
    Permission.org_update: Scope.ANY,
    Permission.members_manage: Scope.ANY,
    Permission.api_keys_manage: Scope.ANY,
    Permission.recordings_write: Scope.ANY,
    Permission.share: Scope.ANY,
    Permission.documents_write: Scope.ANY,
    Permission.audit_read: Scope.ANY,
}
_OWNER = {
    **_ADMIN,
    Permission.org_delete: Scope.ANY,
    Permission.billing: Scope.ANY,
    # Which identity provider may grant roles here is the owner's choice alone.
    Permission.idp_manage: Scope.ANY,
}

ROLE_PERMISSIONS: dict[Role, dict[Permission, Scope]] = {
    Role.owner: _OWNER,
    Role.admin: _ADMIN,
    Role.contributor: _CONTRIBUTOR,
    Role.reader: dict(_EVERYONE),
}

# Which roles each role may hand out (to members and to API keys).
ASSIGNABLE: dict[Role, frozenset[Role]] = {
    Role.owner: frozenset(Role),
    Role.admin: frozenset({Role.contributor, Role.reader}),
    Role.contributor: frozenset(),
    Role.reader: frozenset(),
}


def scope_of(role: Role, permission: Permission) -> Scope | None:
    return ROLE_PERMISSIONS[role].get(permission)


def can_assign(actor: Role, target: Role) -> bool:
    return target in ASSIGNABLE[actor]


_RANK = {Role.reader: 0, Role.contributor: 1, Role.admin: 2, Role.owner: 3}


def at_most(role: Role, ceiling: Role) -> bool:
    """Is ``role`` no higher than ``ceiling``?"""
    return _RANK[role] <= _RANK[ceiling]
