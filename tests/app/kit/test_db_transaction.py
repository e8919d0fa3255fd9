"""``Database.transaction`` scopes the transaction to the tenant, commits on a clean exit, rolls
back on an error, and runs its after-commit callbacks either way; and the connection it yields
is out of pipeline mode (the worker COPYs chunks in it: pipelining BEGIN with the tenant
settings broke every upload)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.kit.db import Database, after_commit


class Boom(Exception):
    pass


async def txid_status(db: Database, xid: int) -> str:
    async with db.transaction() as conn:
        cur = await conn.execute("SELECT txid_status(%s) AS status", (xid,))
        row = await cur.fetchone()
        assert row is not None
        return str(row["status"])


async def fail_in_transaction(db: Database, org_id: uuid.UUID, xids: list[int], ran: list[str]):
    async with db.transaction(org_id=org_id) as conn:
        cur = await conn.execute("SELECT txid_current() AS xid")
        row = await cur.fetchone()
        assert row is not None
        xids.append(row["xid"])
        after_commit(conn, lambda: ran.append("rolled back"))
        raise Boom


async def test_the_tenant_is_set_and_the_block_commits_or_rolls_back(app):
    db: Database = app.state.services.db
    org_id, user_id = uuid.uuid4(), uuid.uuid4()
    ran: list[str] = []
    async with db.transaction(org_id=org_id, user_id=user_id) as conn:
        cur = await conn.execute(
            "SELECT current_setting('app.org_id') AS org, current_setting('app.user_id') AS usr, "
            "txid_current() AS xid"
        )
        row = await cur.fetchone()
        assert row is not None
        assert (row["org"], row["usr"]) == (str(org_id), str(user_id))
        committed = row["xid"]
        after_commit(conn, lambda: ran.append("committed"))
    assert ran == ["committed"]
    assert await txid_status(db, committed) == "committed"

    xids: list[int] = []
    with pytest.raises(Boom):
        await fail_in_transaction(db, org_id, xids, ran)
    assert ran == ["committed", "rolled back"]
    assert await txid_status(db, xids[0]) == "aborted"


async def test_without_a_tenant_the_settings_are_empty(app):
    db: Database = app.state.services.db
    async with db.transaction() as conn:
        cur = await conn.execute(
            "SELECT current_setting('app.org_id', true) AS org, "
            "current_setting('app.key_id', true) AS key"
        )
        assert await cur.fetchone() == {"org": "", "key": ""}


async def test_the_transaction_is_not_in_pipeline_mode(app: Any) -> None:
    db = app.state.services.db
    async with db.transaction() as conn, conn.cursor().copy("COPY (SELECT 1) TO STDOUT") as copy:
        rows = [bytes(row) async for row in copy]
    assert rows == [b"1\n"]
