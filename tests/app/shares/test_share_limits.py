"""The limiters on shares: ``share`` per org on creation, ``share_page`` per client IP on the
public pages, ``media`` per client IP on their media."""

from __future__ import annotations

import uuid

import pytest

from tests.app.conftest import Tenant
from tests.app.shares.test_shares_api import recording, share


@pytest.fixture
def settings(settings):
    return settings.model_copy(
        update={
            "ratelimit_share": "2/86400",
            "ratelimit_share_page": "8/60",
            "ratelimit_media": "3/60",
        }
    )


async def test_links_are_limited_per_org_and_pages_per_client(
    client, settings, org_a: Tenant, org_b: Tenant
):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    # Refused requests spend none of the org's quota: malformed, unknown, not allowed.
    _user, reader_session = await org_a.member("reader")
    for headers, body in (
        (None, {"resource_type": "recording"}),
        (None, {"resource_type": "recording", "resource_id": str(uuid.uuid4())}),
        (
            org_a.session_auth(reader_session),
            {"resource_type": "recording", "resource_id": recording_id},
        ),
    ):
        response = await share(client, org_a, headers, **body)
        assert response.status_code in {400, 403, 404}, response.text
    links = []
    for remaining in ("1", "0"):
        response = await share(client, org_a, resource_type="recording", resource_id=recording_id)
        assert response.status_code == 201
        assert response.headers["x-ratelimit-remaining"] == remaining
        links.append(response.json()["share_id"])
    # Per org: another member of the same org meets the same limit.
    _user, session = await org_a.member("admin")
    response = await share(
        client,
        org_a,
        org_a.session_auth(session),
        resource_type="recording",
        resource_id=recording_id,
    )
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert len((await client.get("/api/share", headers=org_a.auth())).json()["items"]) == 2

    # Pages have a budget of their own: signing the test's people up spent none of it.
    response = await client.get(f"/s/{links[0]}")
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit"] == "8"
    assert response.headers["x-ratelimit-remaining"] == "7"
    for _ in range(int(response.headers["x-ratelimit-remaining"])):
        assert (await client.get(f"/s/{links[0]}")).status_code == 200
    response = await client.get(f"/s/{links[1]}")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    # The media has its own allowance: a player's range requests, not the pages' budget.
    for _ in range(3):
        assert (await client.get(f"/s/{links[0]}/media")).status_code == 200
    assert (await client.get(f"/s/{links[0]}/media")).status_code == 429
