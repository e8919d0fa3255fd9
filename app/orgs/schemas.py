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
