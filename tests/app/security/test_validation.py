"""Shared field validation: UUIDs, emails, URL and filename field types, and how the API
answers invalid path parameters."""

from __future__ import annotations

import json
from uuid import UUID

import pytest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from app.kit.errors import ValidationError
from app.kit.security.validation import (
    Email,
    PublicUrl,
    SafeFilename,
    normalize_email,
    parse_uuid,
)


def test_parse_uuid() -> None:
    value = "3f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b"
    assert parse_uuid(f" {value} ") == UUID(value)
    with pytest.raises(ValidationError, match="org_id must be a UUID"):
        parse_uuid("1 OR 1=1", field="org_id")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Ada@Example.COM", "Ada@example.com"), ("bob+tag@example.org", "bob+tag@example.org")],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "ada", "ada@", "@example.com", "a b@example.com", "a@b@c.com", "x" * 400]
)
def test_normalize_email_refuses(raw: str) -> None:
    with pytest.raises(ValidationError):
        normalize_email(raw)


class _Hook(BaseModel):
    email: Email
    url: PublicUrl
    filename: SafeFilename


def test_field_types() -> None:
    hook = _Hook(email="a@example.com", url="https://1.1.1.1/x", filename="../../a.webm")
    assert hook.filename == "a.webm"
    with pytest.raises(PydanticValidationError) as info:
        _Hook(email="nope", url="http://169.254.169.254/", filename="x")
    fields = {err["loc"][0] for err in info.value.errors()}
    assert fields == {"email", "url"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/recordings/not-a-uuid",
        "/api/recordings/1%20OR%201=1",
        "/api/orgs/123/members",
        "/api/orgs/3f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b/members/%00",
    ],
)
async def test_invalid_uuid_path_params_are_400_problems(client, org_a, path: str) -> None:
    response = await client.get(path, headers=org_a.auth())
    assert response.status_code in (400, 404, 405), response.text
    if response.status_code == 400:
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == "validation_error"
        # `instance` names the caller's own path; the field errors never repeat the input.
        assert "1=1" not in json.dumps(body.get("errors", []))


async def test_recording_id_not_a_uuid_is_400(client, org_a) -> None:
    response = await client.get("/api/recordings/abc", headers=org_a.auth())
    assert response.status_code == 400
    body = response.json()
    assert body["errors"][0]["loc"] == ["path", "recording_id"]
    assert "abc" not in json.dumps(body.get("errors", []))
