"""Recordings: list (cursor pages, status filter), get, rename, delete; two orgs; roles."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from tests.app.conftest import Tenant


def seed(
    url: str, tenant: Tenant, count: int, *, created_by: str | None = None, status: str = "ready"
) -> list[str]:
    ids = []
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(url) as conn:
        for i in range(count):
            rid = str(uuid.uuid4())
            ids.append(rid)
            conn.execute(
                "INSERT INTO recordings (id, org_id, created_by, title, status, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    rid,
                    tenant.org_id,
                    created_by or tenant.user_id,
                    f"Meeting {i}",
                    status,
                    base + timedelta(minutes=i),
                ),
            )
    return ids


async def test_cursor_pagination_walks_every_row_once(
    client, settings, org_a: Tenant, org_b: Tenant
):
    ids = seed(settings.database_url, org_a, 7)
    seed(settings.database_url, org_b, 3)
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/recordings", params=params, headers=org_a.auth())).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once, none of org B's


async def test_status_filter_and_bad_params(client, settings, org_a: Tenant):
    seed(settings.database_url, org_a, 2, status="ready")
    seed(settings.database_url, org_a, 1, status="failed")
    page = (await client.get("/api/recordings?status=failed", headers=org_a.auth())).json()
    assert [item["status"] for item in page["items"]] == ["failed"]
    for query in ("status=bogus", "limit=0", "limit=101", "cursor=%%%"):
        response = await client.get(f"/api/recordings?{query}", headers=org_a.auth())
        assert response.status_code == 400, query
        assert response.headers["content-type"] == "application/problem+json"


async def test_get_rename_delete_and_other_org_404(client, settings, org_a: Tenant, org_b: Tenant):
    (rid,) = seed(settings.database_url, org_a, 1)
    url = f"/api/recordings/{rid}"
    assert (await client.get(url, headers=org_a.auth())).json()["title"] == "Meeting 0"
    for method, body in (("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)):
        response = await client.request(method, url, json=body, headers=org_b.auth())
        assert response.status_code == 404, method
    # Plain text, stored as typed: whoever renders HTML escapes it (tests/app/security/test_text).
    title = "<b>Weekly</b> <script>alert(1)</script>sync"
    response = await client.patch(url, json={"title": f"  {title}\x07 "}, headers=org_a.auth())
    assert response.status_code == 200
    assert response.json()["title"] == title
    assert (await client.delete(url, headers=org_a.auth())).status_code == 204
    assert (await client.get(url, headers=org_a.auth())).status_code == 404
    assert (await client.get("/api/recordings/not-a-uuid", headers=org_a.auth())).status_code == 400


async def test_delete_takes_the_shares_of_the_recording_and_of_its_document(
    client, settings, org_a: Tenant
):
    import secrets
    import uuid

    gone, kept = seed(settings.database_url, org_a, 2)
    document_id = uuid.uuid4()
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO documents (id, org_id, recording_id, title, summary, model) "
            "VALUES (%s, %s, %s, 't', 's', 'm')",
            (document_id, org_a.org_id, gone),
        )
        for resource_type, resource_id in (
            ("recording", gone),
            ("document", gone),
            ("document", document_id),
            ("recording", kept),
        ):
            conn.execute(
                "INSERT INTO shares (id, org_id, resource_type, resource_id) "
                "VALUES (%s, %s, %s, %s)",
                (secrets.token_urlsafe(16), org_a.org_id, resource_type, resource_id),
            )
    assert (await client.delete(f"/api/recordings/{gone}", headers=org_a.auth())).status_code == 204
    with psycopg.connect(settings.database_url) as conn:
        left = conn.execute("SELECT resource_type, resource_id::text FROM shares").fetchall()
    assert left == [("recording", str(kept))]


async def test_contributor_edits_only_own_and_reader_none(client, settings, org_a: Tenant):
    contributor_id, contributor_session = await org_a.member("contributor")
    (own,) = seed(settings.database_url, org_a, 1, created_by=contributor_id)
    (theirs,) = seed(settings.database_url, org_a, 1)
    headers = {"Authorization": f"Bearer {contributor_session}", "X-Record-Org": org_a.org_id}
    ok = await client.patch(f"/api/recordings/{own}", json={"title": "Mine"}, headers=headers)
    assert ok.status_code == 200
    denied = await client.patch(
        f"/api/recordings/{theirs}", json={"title": "Mine"}, headers=headers
    )
    assert denied.status_code == 403
    assert (await client.delete(f"/api/recordings/{theirs}", headers=headers)).status_code == 403

    reader = org_a.auth(await org_a.key("reader"))
    assert (await client.get(f"/api/recordings/{own}", headers=reader)).status_code == 200
    assert (await client.delete(f"/api/recordings/{own}", headers=reader)).status_code == 403
    admin = org_a.auth(await org_a.key("admin"))
    assert (await client.delete(f"/api/recordings/{own}", headers=admin)).status_code == 204
