"""Titles and names are plain text: stored as typed (less control characters), never HTML-cleaned
and never unescaped into markup. Whoever renders HTML escapes them."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from app.kit.errors import ValidationError
from app.kit.security.text import plain_text
from tests.app.conftest import Tenant, signup
from tests.app.recordings.test_upload import upload, wav_bytes

# Entity-escaped markup: unescaping it after cleaning would store a live tag.
ESCAPED_IMG = "&lt;img src=x onerror=alert(1)&gt;"
ESCAPED_SCRIPT = "&#60;script&#62;alert(1)&#60;/script&#62;"
ESCAPED = (ESCAPED_IMG, ESCAPED_SCRIPT, "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;")


@pytest.mark.parametrize(
    "text",
    [
        *ESCAPED,
        "a < b & c",
        "<b>Weekly</b> <script>alert(1)</script>sync",
        "Q3 & Q4 <planning>",
        "שלום world",  # right-to-left text needs no direction controls
        "Café ☕ 👩‍💻",  # the zero-width joiner inside an emoji stays
    ],
)
def test_plain_text_keeps_the_text_as_typed(text: str) -> None:
    assert plain_text(text, max_length=300) == text


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("  Weekly\tsync\r\n  notes  ", "Weekly sync notes"),
        ("Stand\x00up\x07\x1b[31m", "Standup[31m"),  # C0 controls and DEL
        ("Budget\x7f\x85\x9b review", "Budget review"),  # DEL, C1 (NEL, CSI)
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # a right-to-left override
        ("\u2066admin\u2069 \u202aA\u202c", "admin A"),  # isolates and embeddings
    ],
)
def test_plain_text_drops_controls_and_folds_whitespace(given: str, stored: str) -> None:
    assert plain_text(given, max_length=300) == stored


def test_plain_text_refuses_what_is_empty_and_cuts_what_is_long() -> None:
    for empty in ("", "   ", "\x00\x01\u202e", "\n\t"):
        with pytest.raises(ValidationError):
            plain_text(empty, max_length=10)
    assert plain_text("a" * 50, max_length=10) == "a" * 10


async def _titles_and_names(settings: Any) -> list[str]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT title FROM recordings UNION ALL SELECT name FROM orgs "
            "UNION ALL SELECT name FROM api_keys UNION ALL SELECT name FROM users"
        ).fetchall()
    return [row[0] for row in rows if row[0] is not None]


async def test_titles_and_names_come_back_over_http_exactly_as_sent(
    client: httpx.AsyncClient, settings: Any, org_a: Tenant
) -> None:
    # A recording titled with escaped markup, then renamed to text with < and &.
    response = await upload(client, org_a, wav_bytes(0.2), "m.wav", title=ESCAPED_IMG)
    assert response.status_code == 202, response.text
    url = f"/api/recordings/{response.json()['recording']['id']}"
    assert (await client.get(url, headers=org_a.auth())).json()["title"] == ESCAPED_IMG
    renamed = await client.patch(url, json={"title": "a < b & c"}, headers=org_a.auth())
    assert renamed.status_code == 200, renamed.text
    assert (await client.get(url, headers=org_a.auth())).json()["title"] == "a < b & c"

    # An org named at signup, a user name, an org renamed, an API key named.
    user = await signup(client, name=ESCAPED_SCRIPT, org_name=ESCAPED_IMG)
    assert user["user"]["name"] == ESCAPED_SCRIPT
    assert user["org"]["name"] == ESCAPED_IMG
    org_url = f"/api/orgs/{org_a.org_id}"
    patched = await client.patch(org_url, json={"name": "R&D <core>"}, headers=org_a.auth())
    assert patched.status_code == 200, patched.text
    assert (await client.get(org_url, headers=org_a.auth())).json()["name"] == "R&D <core>"
    key = await client.post(
        f"{org_url}/api-keys", json={"name": ESCAPED_IMG, "role": "reader"}, headers=org_a.auth()
    )
    assert key.status_code == 201, key.text
    keys = (await client.get(f"{org_url}/api-keys", headers=org_a.auth())).json()["items"]
    assert ESCAPED_IMG in [k["name"] for k in keys]


async def test_no_stored_title_or_name_holds_a_tag_made_by_unescaping(
    client: httpx.AsyncClient, settings: Any, org_a: Tenant
) -> None:
    # Only entity-escaped text goes in, so any "<" stored was made by the server.
    for title in ESCAPED:
        response = await upload(client, org_a, wav_bytes(0.2), "m.wav", title=title)
        assert response.status_code == 202, response.text
    await signup(client, name=ESCAPED_IMG, org_name=ESCAPED_SCRIPT)
    await client.patch(f"/api/orgs/{org_a.org_id}", json={"name": ESCAPED[2]}, headers=org_a.auth())
    stored = await _titles_and_names(settings)
    assert set(ESCAPED) <= set(stored)
    assert [value for value in stored if "<" in value or ">" in value] == []
