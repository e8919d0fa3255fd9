"""Request and response bodies for accounts and sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from app.auth.rbac import Role


class Strict(BaseModel):
    """A request body: unknown fields refused, text trimmed, and no NUL character, which
    PostgreSQL's text cannot hold (a 400 here, not a 500 from the database)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("Text may not contain NUL (\\u0000) characters.")
        return value


class SignupIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=200)
    org_name: str | None = Field(default=None, min_length=1, max_length=200)


class LoginIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)


class UserOut(BaseModel):
    id: UUID
    email: str
    name: str
    email_verified: bool = False


class TokenIn(Strict):
    """A token from a mailed link."""

    token: str = Field(min_length=16, max_length=128)


class PasswordChangeIn(Strict):
    old: str = Field(min_length=1, max_length=256, description="The current password.")
    new: str = Field(min_length=1, max_length=256, description="The new password.")


class PasswordResetIn(Strict):
    email: EmailStr = Field(max_length=320)


class PasswordResetConfirmIn(Strict):
    token: str = Field(min_length=16, max_length=128)
    password: str = Field(min_length=1, max_length=256)


class Accepted(BaseModel):
    detail: str


class OrgOut(BaseModel):
    id: UUID
    name: str
    created_at: datetime | None = None


class OrgMembershipOut(BaseModel):
    id: UUID
    name: str
    role: Role


class SignupOut(BaseModel):
    user: UserOut
    org: OrgOut | None
    session_token: str
    expires_at: datetime


class LoginOut(BaseModel):
    session_token: str
    expires_at: datetime


class MeOut(BaseModel):
    auth: str
    user: UserOut | None
    org: OrgMembershipOut | None
    orgs: list[OrgMembershipOut]
    api_key_id: UUID | None = None
