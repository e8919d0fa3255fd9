"""PostgreSQL access: one async pool, one transaction per request or job step.

The API and the worker log in as roles that own nothing (``app/kit/roles.py``), and every
connection switches to ``record_app``, so row-level security applies to everything the
application reads or writes -- and still does after a ``RESET ROLE``. The tenant is a
per-transaction setting (``app.org_id``, and ``app.user_id`` for what belongs to a person): a
query that forgets its org filter sees nothing rather than everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from app.kit.metrics import observe_query
from app.kit.roles import APP_ROLE
from app.settings import Settings

Conn = AsyncConnection[DictRow]

# How long one series of reconnection attempts lasts (see ``Database.__init__``).
RECONNECT_SECONDS = 2.0


def libpq_conninfo(url: str) -> str:
    """Accept SQLAlchemy-style URLs (``postgresql+psycopg://``) as well as plain libpq ones."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        url = "postgresql://" + rest if scheme.startswith("postgres") else url
    return make_conninfo(url)


def database_name(url: str) -> str:
    return str(conninfo_to_dict(libpq_conninfo(url)).get("dbname", ""))


class Database:
    def __init__(
        self,
        settings: Settings,
        *,
        app_role: bool = True,
        statement_timeout_ms: int | None = None,
        check_connections: bool = False,
    ) -> None:
        """``check_connections``: test each connection before handing it out (a round trip),
        for the worker, whose pooled connections may sit idle through a database restart and
        would each cost a job an attempt."""
        self._settings = settings
        self._app_role = app_role
        self._statement_timeout_ms = statement_timeout_ms or settings.database_statement_timeout_ms
        self._asking: set[asyncio.Task[None]] = set()
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            libpq_conninfo(settings.database_url),
            min_size=settings.database_pool_min,
            max_size=settings.database_pool_max,
            timeout=settings.database_pool_timeout_seconds,
            # psycopg_pool retries a failed connection with doubling waits for as long as this,
            # uncapped: after a 10 s database restart the next attempt came up to 8 s late, and
            # later the longer the outage was. Short attempts (tries 0, 1 and 2 s in), each
            # followed by a fresh one while requests wait (``_keep_trying``), keep a try at
            # least every second, so the API is back within about a second of the database.
            reconnect_timeout=RECONNECT_SECONDS,
            reconnect_failed=self._keep_trying,
            kwargs={"row_factory": dict_row, "application_name": "record"},
            configure=self._configure,
            check=AsyncConnectionPool.check_connection if check_connections else None,
            open=False,
            name="record",
        )

    async def _keep_trying(self, pool: AsyncConnectionPool[Conn]) -> None:
        """A reconnection that gave up leaves the requests still waiting with nobody trying for
        them (the pool starts a new attempt only when a connection is asked for): ask."""
        if pool.closed or not pool.get_stats().get("requests_waiting"):
            return
        task = asyncio.get_running_loop().create_task(self._ask_for_connection())
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def _ask_for_connection(self) -> None:
        with contextlib.suppress(PoolTimeout, PoolClosed, psycopg.Error):
            async with self.pool.connection():
                pass

    async def _configure(self, conn: Conn) -> None:
        # Session settings, then commit: a pooled connection must come back idle.
        await conn.set_autocommit(True)
        if self._app_role:
            await conn.execute(f"SET ROLE {APP_ROLE}")
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false)",
            (str(self._statement_timeout_ms),),
        )
        # pgvector's adapters (text and binary): embeddings go in and out as numpy arrays.
        # (The extension arrives with the first migration; until then /readyz reports that.)
        with contextlib.suppress(psycopg.ProgrammingError):
            await register_vector_async(conn)
        await conn.set_autocommit(False)

    async def open(self, *, wait: bool = True, within: float = 30.0) -> None:
        """Open the pool; with ``wait``, until a connection works or ``within`` seconds pass."""
        await self.pool.open(wait=False)
        if not wait:
            return
        # Not the pool's own wait: its first attempts give up after the reconnect timeout,
        # and only a request for a connection starts new ones.
        deadline = time.monotonic() + within
        while True:
            try:
                async with self.pool.connection():
                    return
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    await self.pool.close()
                    raise

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(
        self, *, org_id: UUID | None = None, user_id: UUID | None = None
    ) -> AsyncIterator[Conn]:
        """A connection inside one transaction, committed when the block exits cleanly."""
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction():
                    await set_tenant(conn, org_id=org_id, user_id=user_id)
                    yield conn
            finally:
                # Committed or rolled back: either way what the callbacks forget is stale.
                for callback in _after_commit.pop(conn, ()):
                    callback()


# Callbacks to run once the transaction on a connection ends (``after_commit``).
_after_commit: weakref.WeakKeyDictionary[Conn, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def after_commit(conn: Conn, callback: Callable[[], None]) -> None:
    """Run ``callback`` when the ``Database.transaction`` holding ``conn`` ends (commit or
    rollback): for caches of what the transaction changes, which a concurrent reader could
    refill from the old rows until the commit."""
    _after_commit.setdefault(conn, []).append(callback)


async def set_tenant(
    conn: Conn, *, org_id: UUID | None, user_id: UUID | None, key_id: UUID | None = None
) -> None:
    """Scope the current transaction to an org (and a user, and the API key acting for them).

    ``None`` clears a setting. With a key set, the policies that show a person their own
    memberships, orgs and sessions across orgs do not apply: a key sees its org only.
    """
    await conn.execute(
        "SELECT set_config('app.org_id', %s, true), set_config('app.user_id', %s, true), "
        "set_config('app.key_id', %s, true)",
        (
            str(org_id) if org_id else "",
            str(user_id) if user_id else "",
            str(key_id) if key_id else "",
        ),
    )


async def fetch_one(conn: Conn, query: str, params: Any = None) -> DictRow | None:
    started = time.perf_counter()
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    _observe(query, started)
    return row


async def fetch_all(conn: Conn, query: str, params: Any = None) -> list[DictRow]:
    started = time.perf_counter()
    cur = await conn.execute(query, params)
    rows = await cur.fetchall()
    _observe(query, started)
    return rows


async def execute(conn: Conn, query: str, params: Any = None) -> int:
    started = time.perf_counter()
    cur = await conn.execute(query, params)
    _observe(query, started)
    return cur.rowcount


def _observe(query: str, started: float) -> None:
    observe_query(query, time.perf_counter() - started)
