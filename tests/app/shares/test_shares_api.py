"""Share links: who may make and revoke them, two orgs, and what a link shows to anyone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from app.documents.repository import save_document
from app.kit.db import Database
from app.transcripts.repository import save_transcript
from tests.app.conftest import Tenant
from tests.app.recordings.test_upload import upload, wav_bytes


def citations(recording_id: str) -> list[dict[str, object]]:
    return [
        {
            "number": 1,
            "recording_id": recording_id,
            "recording_title": "Sync",
            "chunk_id": str(uuid.uuid4()),
            "start": 2.5,
            "end": 6.0,
            "text": "Maria owns the budget.",
        }
    ]


PASSAGE = "Maria owns the budget."
SEGMENTS = [(0.0, 2.5, "Welcome to the planning sync."), (2.5, 6.0, "Maria owns the budget.")]


async def recording(client, settings, tenant: Tenant, title: str, headers=None):
    """A recording uploaded through the API, then given a transcript and a document."""
    content = wav_bytes(0.5)
    response = await upload(client, tenant, content, "sync.wav", title=title, headers=headers)
    assert response.status_code == 202, response.text
    recording_id = uuid.UUID(response.json()["recording"]["id"])
    org = uuid.UUID(tenant.org_id)
    db = Database(settings)
    await db.open()
    try:
        async with db.transaction(org_id=org) as conn:
            await save_transcript(
                conn,
                org_id=org,
                recording_id=recording_id,
                language="en",
                text=" ".join(text for _, _, text in SEGMENTS),
                model="whisper-1",
                segments=SEGMENTS,
            )
            await save_document(
                conn,
                org_id=org,
                recording_id=recording_id,
                title=title,
                summary="Budget owners were named.",
                key_points=["Maria owns the budget."],
                action_items=[],
                model="record-extractive-1",
            )
    finally:
        await db.close()
    return str(recording_id), content


def conversation(
    settings, tenant: Tenant, user_id: str | None = None, cites: str | None = None
) -> str:
    conversation_id = str(uuid.uuid4())
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO conversations (id, org_id, user_id, title) VALUES (%s, %s, %s, %s)",
            (conversation_id, tenant.org_id, user_id or tenant.user_id, "Budget questions"),
        )
        for role, content in (("user", "Who owns the budget?"), ("assistant", "Maria. [1]")):
            conn.execute(
                "INSERT INTO messages (id, org_id, conversation_id, role, content, citations, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp())",
                (
                    uuid.uuid4(),
                    tenant.org_id,
                    conversation_id,
                    role,
                    content,
                    Jsonb(citations(cites or str(uuid.uuid4())) if role == "assistant" else []),
                ),
            )
    return conversation_id


async def share(client, tenant: Tenant, headers=None, **body):
    return await client.post("/api/share", json=body, headers=headers or tenant.auth())


async def test_a_recording_link_opens_transcript_document_and_media_for_anyone(
    client, settings, org_a: Tenant
):
    recording_id, content = await recording(client, settings, org_a, "Planning sync")
    before = datetime.now(UTC)
    response = await share(
        client, org_a, resource_type="recording", resource_id=recording_id, expires_in=3600
    )
    assert response.status_code == 201, response.text
    link = response.json()
    assert len(link["share_id"]) == 32
    assert link["url"] == f"{settings.public_url}/s/{link['share_id']}"
    expires = datetime.fromisoformat(link["expires_at"])
    assert before + timedelta(seconds=3590) < expires < before + timedelta(seconds=3700)

    page = await client.get(f"/s/{link['share_id']}")  # no credentials at all
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert "noindex" in page.headers["x-robots-tag"]
    body = page.json()
    assert body["resource_type"] == "recording"
    assert body["recording"]["title"] == "Planning sync"
    assert [s["text"] for s in body["transcript"]["segments"]] == [s[2] for s in SEGMENTS]
    assert body["document"]["key_points"] == ["Maria owns the budget."]
    assert body["conversation"] is None
    # Nothing that names the org or its people.
    for secret in (org_a.org_id, org_a.user_id, org_a.email, recording_id):
        assert secret not in page.text
    media = await client.get(body["media_url"].removeprefix(settings.public_url))
    assert media.status_code == 200
    assert media.content == content

    with psycopg.connect(settings.database_url) as conn:
        audited = conn.execute(
            "SELECT action, target_id, data->>'resource_id' FROM audit_log "
            "WHERE org_id = %s AND target_type = 'share'",
            (org_a.org_id,),
        ).fetchall()
    assert audited == [("share.create", link["share_id"], recording_id)]

    # Deleting the recording takes its links with it.
    await client.delete(f"/api/recordings/{recording_id}", headers=org_a.auth())
    assert (await client.get(f"/s/{link['share_id']}")).status_code == 404


async def test_document_and_conversation_links_show_only_those(client, settings, org_a: Tenant):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    response = await share(client, org_a, resource_type="document", resource_id=recording_id)
    assert response.status_code == 201, response.text
    share_id = response.json()["share_id"]
    assert response.json()["expires_at"] is None
    body = (await client.get(f"/s/{share_id}")).json()
    assert body["document"]["summary"] == "Budget owners were named."
    assert body["recording"]["title"] == "Planning sync"
    assert body["transcript"] is None
    assert body["media_url"] is None
    assert (await client.get(f"/s/{share_id}/media")).status_code == 404

    conversation_id = conversation(settings, org_a, cites=recording_id)
    response = await share(
        client,
        org_a,
        org_a.session_auth(),  # the person's own, not a key's
        resource_type="conversation",
        resource_id=conversation_id,
    )
    assert response.status_code == 201, response.text
    page = f"/s/{response.json()['share_id']}"
    body = (await client.get(page)).json()
    assert body["conversation"]["title"] == "Budget questions"
    assert [m["role"] for m in body["conversation"]["messages"]] == ["user", "assistant"]
    # The moment, not the org's ids.
    assert body["conversation"]["messages"][1]["citations"] == [
        {"number": 1, "recording_title": "Sync", "start": 2.5, "end": 6.0, "text": PASSAGE}
    ]
    assert recording_id not in (await client.get(page)).text
    assert body["recording"] is None
    # The cited recording deleted: its citations go from the page with it.
    await client.delete(f"/api/recordings/{recording_id}", headers=org_a.auth())
    body = (await client.get(page)).json()
    assert body["conversation"]["messages"][1]["citations"] == []

    # A conversation is its owner's: a colleague, even an admin, cannot share it.
    _admin, admin_session = await org_a.member("admin")
    response = await share(
        client,
        org_a,
        org_a.session_auth(admin_session),
        resource_type="conversation",
        resource_id=conversation_id,
    )
    assert response.status_code == 404


async def test_roles_decide_who_shares_lists_and_revokes(client, settings, org_a: Tenant):
    owners_id, _ = await recording(client, settings, org_a, "Owner's")
    # People, not keys: a key acts as the member who made it (here the owner).
    _contributor, contributor_session = await org_a.member("contributor")
    contributor = org_a.session_auth(contributor_session)
    contributors_id, _ = await recording(client, settings, org_a, "Contributor's", contributor)
    reader = org_a.auth(await org_a.key("reader"))

    response = await share(client, org_a, reader, resource_type="recording", resource_id=owners_id)
    assert response.status_code == 403
    response = await share(
        client, org_a, contributor, resource_type="recording", resource_id=owners_id
    )
    assert response.status_code == 403
    response = await share(
        client, org_a, contributor, resource_type="recording", resource_id=contributors_id
    )
    assert response.status_code == 201
    contributors_link = response.json()["share_id"]
    response = await share(client, org_a, resource_type="recording", resource_id=owners_id)
    owners_link = response.json()["share_id"]
    private = conversation(settings, org_a)
    response = await share(
        client,
        org_a,
        org_a.session_auth(),  # the person's own, not a key's
        resource_type="conversation",
        resource_id=private,
    )
    conversation_link = response.json()["share_id"]

    def ids(response) -> set[str]:
        assert response.status_code == 200, response.text
        return {item["share_id"] for item in response.json()["items"]}

    assert ids(await client.get("/api/share", headers=contributor)) == {contributors_link}
    assert ids(await client.get("/api/share", headers=org_a.auth())) == {
        contributors_link,
        owners_link,
        conversation_link,
    }
    # An admin key made by the owner acts for the owner: an admin in person instead.
    _admin, admin_session = await org_a.member("admin")
    admin = org_a.session_auth(admin_session)
    # Owners and admins see every live link, a colleague's conversation link included: they
    # are the ones who can end it.
    assert ids(await client.get("/api/share", headers=admin)) == {
        contributors_link,
        owners_link,
        conversation_link,
    }
    response = await client.get(f"/api/share?resource_id={owners_id}", headers=org_a.auth())
    assert ids(response) == {owners_link}
    assert (await client.get("/api/share", headers=reader)).status_code == 403

    response = await client.delete(f"/api/share/{owners_link}", headers=contributor)
    assert response.status_code == 403
    response = await client.delete(f"/api/share/{contributors_link}", headers=admin)
    assert response.status_code == 204
    assert (await client.get(f"/s/{contributors_link}")).status_code == 404
    response = await client.delete(f"/api/share/{contributors_link}", headers=admin)
    assert response.status_code == 404  # revoked is gone
    with psycopg.connect(settings.database_url) as conn:
        actions = conn.execute(
            "SELECT action FROM audit_log WHERE target_id = %s ORDER BY created_at",
            (contributors_link,),
        ).fetchall()
    assert actions == [("share.create",), ("share.revoke",)]


async def test_another_org_can_neither_share_list_nor_revoke(
    client, settings, org_a: Tenant, org_b: Tenant
):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    link = (await share(client, org_a, resource_type="recording", resource_id=recording_id)).json()
    for resource_type in ("recording", "document"):
        response = await share(client, org_b, resource_type=resource_type, resource_id=recording_id)
        assert response.status_code == 404
    assert (await client.get("/api/share", headers=org_b.auth())).json()["items"] == []
    response = await client.get(f"/api/share?resource_id={recording_id}", headers=org_b.auth())
    assert response.json()["items"] == []
    response = await client.delete(f"/api/share/{link['share_id']}", headers=org_b.auth())
    assert response.status_code == 404
    assert (await client.get(f"/s/{link['share_id']}")).status_code == 200


async def test_expired_revoked_and_unknown_links_are_gone(client, settings, org_a: Tenant):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    link = (
        await share(
            client, org_a, resource_type="recording", resource_id=recording_id, expires_in=60
        )
    ).json()
    assert (await client.get(f"/s/{link['share_id']}")).status_code == 200
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE shares SET expires_at = now() - interval '1 second' WHERE id = %s",
            (link["share_id"],),
        )
    for path in (f"/s/{link['share_id']}", f"/s/{link['share_id']}/media", "/s/" + "x" * 32):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/share", headers=org_a.auth())).json()["items"] == []
    assert (await client.get("/s/short")).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"resource_type": "folder", "resource_id": str(uuid.uuid4())},
        {"resource_type": "recording", "resource_id": "not-a-uuid"},
        {"resource_type": "recording", "resource_id": str(uuid.uuid4()), "expires_in": 59},
        {"resource_type": "recording", "resource_id": str(uuid.uuid4()), "expires_in": 10**9},
        {"resource_type": "recording"},
        {"resource_type": "recording", "resource_id": str(uuid.uuid4()), "public": True},
    ],
)
async def test_bad_shares_are_problems_and_make_nothing(client, settings, org_a: Tenant, body):
    response = await client.post("/api/share", json=body, headers=org_a.auth())
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM shares").fetchone() == (0,)
