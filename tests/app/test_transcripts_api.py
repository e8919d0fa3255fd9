"""GET /api/recordings/{id}/transcript: two orgs, and the cache behind it."""

from __future__ import annotations

import uuid

import psycopg

from app.transcripts.service import transcript_cache, transcript_scope
from tests.app.conftest import Tenant
from tests.app.shares.test_shares_api import SEGMENTS, recording


async def test_transcripts_are_cached_per_recording_and_never_outlive_it(
    client, settings, app, org_a: Tenant, org_b: Tenant
):
    recording_id, _ = await recording(client, settings, org_a, "Planning sync")
    path = f"/api/recordings/{recording_id}/transcript"
    first = await client.get(path, headers=org_a.auth())
    assert first.status_code == 200
    assert [s["text"] for s in first.json()["segments"]] == [s[2] for s in SEGMENTS]
    assert (await client.get(path, headers=org_b.auth())).status_code == 404

    # Changed behind the cache's back: the cached answer is what comes back...
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE transcript_segments SET text = 'edited' WHERE idx = 0")
    assert (await client.get(path, headers=org_a.auth())).json() == first.json()
    # ...until the worker, having saved a new transcript, retires it.
    redis, org = app.state.services.redis, uuid.UUID(org_a.org_id)
    await transcript_cache(redis, settings).invalidate(
        transcript_scope(org, uuid.UUID(recording_id))
    )
    again = (await client.get(path, headers=org_a.auth())).json()
    assert again["segments"][0]["text"] == "edited"
    assert (await client.get(path, headers=org_b.auth())).status_code == 404  # cached or not

    # Deleted: gone at once, whatever the cache holds.
    await client.get(path, headers=org_a.auth())
    with psycopg.connect(settings.database_url) as conn:  # as if the cache were never told
        conn.execute("DELETE FROM recordings WHERE id = %s", (recording_id,))
    assert (await client.get(path, headers=org_a.auth())).status_code == 404
