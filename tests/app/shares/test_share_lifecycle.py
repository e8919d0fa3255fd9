"""How links end: with the member who made them, with what they shared, once each; and the
races and missing files that must not leave a live link or a 500 behind."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from app.auth.principal import AuthKind, Principal
from app.auth.rbac import Role
from app.kit.db import Database
from app.kit.errors import NotFoundError
from app.shares import service
from app.shares.schemas import ResourceType, ShareIn
from tests.app.conftest import Tenant
from tests.app.shares.test_shares_api import conversation, recording, share


def audit(settings, share_id: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT action, data->>'reason' FROM audit_log WHERE target_id = %s "
            "ORDER BY created_at, id",
            (share_id,),
        ).fetchall()


async def test_a_removed_members_links_end_with_them(client, settings, org_a: Tenant):
    member_id, session = await org_a.member("contributor")
    mine = org_a.session_auth(session)
    private = conversation(settings, org_a, user_id=member_id)
    recording_id, _ = await recording(client, settings, org_a, "Theirs", mine)
    links = []
    for resource_type, resource_id in (("conversation", private), ("recording", recording_id)):
        response = await share(
            client, org_a, mine, resource_type=resource_type, resource_id=resource_id
        )
        assert response.status_code == 201, response.text
        links.append(response.json()["share_id"])
    response = await client.delete(
        f"/api/orgs/{org_a.org_id}/members/{member_id}", headers=org_a.auth()
    )
    assert response.status_code == 204
    for link in links:
        assert (await client.get(f"/s/{link}")).status_code == 404
        assert audit(settings, link) == [("share.create", None), ("share.revoke", "member removed")]
    assert (await client.get("/api/share", headers=org_a.auth())).json()["items"] == []


async def test_a_member_made_reader_loses_their_links_but_others_keep_theirs(
    client, settings, org_a: Tenant
):
    member_id, session = await org_a.member("contributor")
    theirs, _ = await recording(client, settings, org_a, "Theirs", org_a.session_auth(session))
    link = (
        await share(
            client,
            org_a,
            org_a.session_auth(session),
            resource_type="recording",
            resource_id=theirs,
        )
    ).json()["share_id"]
    owners = (await share(client, org_a, resource_type="recording", resource_id=theirs)).json()
    response = await client.patch(
        f"/api/orgs/{org_a.org_id}/members/{member_id}",
        json={"role": "reader"},
        headers=org_a.auth(),
    )
    assert response.status_code == 200, response.text
    assert (await client.get(f"/s/{link}")).status_code == 404
    assert audit(settings, link)[-1] == ("share.revoke", "member became a reader")
    assert (await client.get(f"/s/{owners['share_id']}")).status_code == 200


async def test_links_that_end_with_their_recording_or_conversation_are_audited(
    client, settings, org_a: Tenant
):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    link = (await share(client, org_a, resource_type="recording", resource_id=recording_id)).json()[
        "share_id"
    ]
    await client.delete(f"/api/recordings/{recording_id}", headers=org_a.auth())
    assert audit(settings, link) == [
        ("share.create", None),
        ("share.revoke", "recording deleted"),
    ]
    private = conversation(settings, org_a)
    link = (
        await share(
            client,
            org_a,
            org_a.session_auth(),  # the person's own, not a key's
            resource_type="conversation",
            resource_id=private,
        )
    ).json()["share_id"]
    await client.delete(f"/api/conversations/{private}", headers=org_a.session_auth())
    assert audit(settings, link)[-1] == ("share.revoke", "conversation deleted")


def owner_of(tenant: Tenant) -> Principal:
    return Principal(
        kind=AuthKind.session,
        user_id=uuid.UUID(tenant.user_id),
        org_id=uuid.UUID(tenant.org_id),
        role=Role.owner,
    )


async def test_two_revokes_at_once_revoke_once(client, settings, org_a: Tenant):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    link = (await share(client, org_a, resource_type="recording", resource_id=recording_id)).json()[
        "share_id"
    ]
    principal = owner_of(org_a)
    db = Database(settings)
    await db.open()
    try:

        async def revoke_again() -> None:
            async with db.transaction(org_id=principal.org) as conn:
                await service.revoke_share(conn, principal, link)

        async with db.transaction(org_id=principal.org) as conn:
            await service.revoke_share(conn, principal, link)
            second = asyncio.create_task(revoke_again())
            await asyncio.sleep(0.3)  # it has seen the link live and waits on the row
            assert not second.done()
        with pytest.raises(NotFoundError):
            await second
    finally:
        await db.close()
    assert [action for action, _ in audit(settings, link)] == ["share.create", "share.revoke"]


async def test_a_link_made_while_its_recording_is_deleted_goes_with_it(
    client, settings, org_a: Tenant
):
    """The link's check has passed and the recording's delete starts before the link is
    written: the delete must wait for it, then take it along; no live link to nothing."""
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    principal = owner_of(org_a)
    go_on = asyncio.Event()

    async def charge() -> None:  # between the check and the insert
        await go_on.wait()

    db = Database(settings)
    await db.open()
    try:

        async def make_link() -> str:
            async with db.transaction(org_id=principal.org) as conn:
                out = await service.create_share(
                    conn,
                    settings,
                    principal,
                    ShareIn(resource_type=ResourceType.recording, resource_id=recording_id),
                    charge=charge,
                )
            return out.share_id

        making = asyncio.create_task(make_link())
        await asyncio.sleep(0.2)
        deleting = asyncio.create_task(
            client.delete(f"/api/recordings/{recording_id}", headers=org_a.auth())
        )
        await asyncio.sleep(0.3)  # the delete is now waiting on the link's lock
        assert not deleting.done()
        go_on.set()
        link = await making
        assert (await deleting).status_code == 204
    finally:
        await db.close()
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM shares WHERE id = %s", (link,)).fetchone() == (0,)
    assert (await client.get(f"/s/{link}")).status_code == 404


async def test_media_gone_from_storage_is_a_404_not_a_500(client, settings, org_a: Tenant):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    link = (await share(client, org_a, resource_type="recording", resource_id=recording_id)).json()[
        "share_id"
    ]
    for path in (settings.state_dir / "objects").rglob("*"):
        if path.is_file():
            path.unlink()
    response = await client.get(f"/s/{link}/media")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_list_pages_with_a_cursor(client, settings, org_a: Tenant):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    made = [
        (await share(client, org_a, resource_type="recording", resource_id=recording_id)).json()[
            "share_id"
        ]
        for _ in range(3)
    ]
    first = (await client.get("/api/share?limit=2", headers=org_a.auth())).json()
    assert len(first["items"]) == 2
    rest = (
        await client.get(f"/api/share?limit=2&cursor={first['next_cursor']}", headers=org_a.auth())
    ).json()
    assert rest["next_cursor"] is None
    listed = [item["share_id"] for item in first["items"] + rest["items"]]
    assert sorted(listed) == sorted(made)
    response = await client.get("/api/share?cursor=nonsense", headers=org_a.auth())
    assert response.status_code == 400
