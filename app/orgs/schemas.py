"""Request and response bodies for orgs, members and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, EmailStr, Field

from app.auth.rbac import Role
from app.auth.schemas import Strict


class OrgIn(Strict):
    name: str = Field(min_length=1, max_length=200)


class MemberIn(Strict):
    email: EmailStr = Field(max_length=320)
    role: Role


class InvitationOut(BaseModel):
    id: UUID
    email: str
    role: Role
    invited_by: UUID | None
    created_at: datetime
    expires_at: datetime


class InvitationList(BaseModel):
    items: list[InvitationOut]


class InvitationAcceptIn(Strict):
    token: str = Field(min_length=16, max_length=128)


class OidcBindingIn(Strict):
    issuer: str = Field(
        min_length=1, max_length=500, description="The identity provider's `iss`, exactly."
    )
    claim_value: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description=(
            "The value of the org claim (OIDC_ORG_CLAIM) that means this org: the org's id "
            "(the default; no other value is accepted, so no org can claim another's first)."
        ),
    )
    max_role: Role = Field(
        default=Role.admin, description="The highest role the identity provider may grant here."
    )


class OidcBindingOut(BaseModel):
    issuer: str
    claim_value: str
    max_role: Role
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class MemberPatch(Strict):
    role: Role


class MemberOut(BaseModel):
    user_id: UUID | None
    email: str
    name: str | None = None
    role: Role
    status: Literal["active", "invited"] = "active"
    created_at: datetime


class MemberList(BaseModel):
    items: list[MemberOut]


class ApiKeyIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    role: Role


class ApiKeyOut(BaseModel):
    id: UUID
    name: str
    prefix: str
    role: Role
    created_by: UUID | None
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret: shown this once, stored only as a hash.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]
