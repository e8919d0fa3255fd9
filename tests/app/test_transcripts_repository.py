"""The transcript queries name the org themselves, not only through row-level security: run as
the table owner (whom RLS does not bind), another org's id finds nothing."""

from __future__ import annotations

import uuid

import psycopg
from psycopg.rows import dict_row

from app.transcripts import repository


async def test_segments_are_read_and_replaced_only_within_their_org(settings) -> None:
    org, other, recording = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, row_factory=dict_row
    ) as conn:  # the owner: RLS does not apply, so only the WHERE clauses keep orgs apart
        for org_id in (org, other):
            await conn.execute("INSERT INTO orgs (id, name) VALUES (%s, 'o')", (org_id,))
        await conn.execute(
            "INSERT INTO recordings (id, org_id, title) VALUES (%s, %s, 't')", (recording, org)
        )
        transcript_id = await repository.save_transcript(
            conn,
            org_id=org,
            recording_id=recording,
            language="en",
            text="hello there",
            model="m",
            segments=[(0.0, 1.0, "hello"), (1.0, 2.0, "there")],
        )
        assert len(await repository.get_segments(conn, org, transcript_id)) == 2
        assert await repository.get_segments(conn, other, transcript_id) == []
