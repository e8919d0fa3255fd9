"""The restore drill (issue 15, item 9): back up a live stack, lose it, restore it, find the same.

Two orgs with ready recordings (chunks embedded by the real model) and their objects; a backup
(`record db backup`'s code) taken as the owner role; then the database is dropped, the object
store emptied and Valkey flushed. A new database is provisioned the way a stack's is (roles,
extensions, no tables) and the backup restored into it. A new API on it finds, for each org,
what it found before, and still nothing of the other org's; the owner owns every object, the
grants, row-level security and SECURITY DEFINER functions are as they were.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis

from app.kit.roles import provision
from app.kit.storage import create_store, recording_key
from app.ops.backup import BackupError, backup, restore
from tests.app.conftest import Tenant
from tests.conftest import ROLES, as_role
from tests.reliability.conftest import http_client, running_app

pytestmark = pytest.mark.slow

# Grants as they act (no ACL means the default one: the owner's rights alone).
# Every object of schema public the application made (not an extension's), with its owner, its
# grants and its row-level security; every function with its owner, grants and SECURITY
# DEFINER; every policy with its expression; schema public's grants.
CATALOGUE = """
SELECT 'rel ' || c.relname || ' ' || c.relkind::text, pg_get_userbyid(c.relowner)::text,
       coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char",
                                     c.relowner))::text,
       c.relrowsecurity::text || c.relforcerowsecurity::text
  FROM pg_class AS c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND NOT EXISTS (SELECT FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
UNION ALL
SELECT 'fn ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       pg_get_userbyid(p.proowner)::text, coalesce(p.proacl, acldefault('f', p.proowner))::text,
       p.prosecdef::text
  FROM pg_proc AS p
 WHERE p.pronamespace = 'public'::regnamespace
   AND NOT EXISTS (SELECT FROM pg_depend AS d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'policy ' || tablename || '.' || policyname, array_to_string(roles, ','),
       coalesce(qual, '')::text, coalesce(with_check, '')::text
  FROM pg_policies WHERE schemaname = 'public'
UNION ALL
SELECT 'schema public', pg_get_userbyid(nspowner)::text,
       coalesce(nspacl, acldefault('n', nspowner))::text, ''
  FROM pg_namespace WHERE nspname = 'public'
ORDER BY 1
"""


def catalogue(url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(CATALOGUE).fetchall()]


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def found(http: Any, tenant: Tenant, query: str) -> list[tuple[str, str]]:
    response = await http.post(
        "/api/search", json={"query": query, "limit": 10}, headers=tenant.auth()
    )
    assert response.status_code == 200, response.text
    return [(hit["recording_id"], hit["chunk_id"]) for hit in response.json()["results"]]


QUERIES = ("budget review", "who is hiring engineers?", "team offsite in June")


async def test_a_backup_restores_into_a_new_database_with_the_same_search_and_isolation(
    settings: Any,
    client: Any,
    models: Any,
    corpus: dict[str, tuple[str, list[str]]],
    org_a: Tenant,
    org_b: Tenant,
    model_app: Any,
    pg_server: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # The recordings' media, in the stack's object store, named by their rows.
    store = create_store(settings)
    media: dict[str, bytes] = {}
    for name, (recording_id, _chunks) in corpus.items():
        org = org_b if name == "rival" else org_a
        key = recording_key(UUID(org.org_id), UUID(recording_id), "wav")
        media[key] = f"RIFF {name} {recording_id} ".encode() * 200
        await store.write(key, one_chunk(media[key]), content_type="audio/wav")
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE recordings SET media_key = %s, content_type = 'audio/wav', "
                "size_bytes = %s WHERE id = %s",
                (key, len(media[key]), recording_id),
            )
    before = {
        (tenant.org_id, query): await found(client, tenant, query)
        for tenant in (org_a, org_b)
        for query in QUERIES
    }
    planning, rival = corpus["planning"][0], corpus["rival"][0]
    assert planning in {r for r, _ in before[(org_a.org_id, "budget review")]}
    assert {r for r, _ in before[(org_b.org_id, "budget review")]} == {rival}
    old_catalogue = catalogue(settings.database_url)

    # The runtime roles may not take a backup: they cannot read every row.
    with pytest.raises(BackupError, match="owner's DATABASE_URL"):
        await backup(as_role(settings.database_url, ROLES.api), store, tmp_path / "no", release="t")
    directory = tmp_path / "backup"
    manifest = await backup(
        as_role(settings.database_url, ROLES.owner), store, directory, release="record@test"
    )
    assert manifest.rows["recordings"] == 3
    assert manifest.rows["transcript_chunks"] == sum(len(c) for _, c in corpus.values())
    assert {o.key for o in manifest.objects} == set(media)
    assert "vector" in manifest.extensions

    # The stack is lost: its database, its objects, its caches.
    old_name = psycopg.conninfo.conninfo_to_dict(settings.database_url)["dbname"]
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{old_name}" WITH (FORCE)')
    shutil.rmtree(settings.state_dir / "objects")
    redis.Redis.from_url(redis_url).flushall()

    # A new database, as the provisioner makes a stack's: roles, extensions, no tables.
    new_name = f"{old_name}_restored"
    provision(lambda db: psycopg.connect(pg_server.url(db), autocommit=True), ROLES, new_name)
    restored_settings = settings.model_copy(update={"database_url": pg_server.url(new_name)})
    try:
        new_store = create_store(restored_settings)
        # Run as the superuser: every object must still be the owner role's.
        restored = await restore(restored_settings.database_url, new_store, directory)
        assert restored.objects == 3
        assert not restored.upgrade_needed
        # Now it has tables: a second restore is refused unless forced.
        with pytest.raises(BackupError, match=r"not empty.*--force"):
            await restore(restored_settings.database_url, new_store, directory)

        new_catalogue = catalogue(restored_settings.database_url)
        assert set(new_catalogue) ^ set(old_catalogue) == set()
        assert new_catalogue == old_catalogue
        for key, data in media.items():
            assert (settings.state_dir / "objects" / key).read_bytes() == data

        async with (
            running_app(restored_settings, models_app=model_app) as application,
            http_client(application) as http,
        ):
            for (org_id, query), hits in before.items():
                tenant = org_a if org_id == org_a.org_id else org_b
                assert await found(http, tenant, query) == hits, (tenant.org_id, query)
            # Isolation holds: org B's key finds nothing of org A's recording, by id either.
            response = await http.get(f"/api/recordings/{planning}", headers=org_b.auth())
            assert response.status_code == 404
            response = await http.get(f"/api/recordings/{planning}", headers=org_a.auth())
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ready"
    finally:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{new_name}" WITH (FORCE)')


async def test_restore_refuses_what_it_cannot_restore_well(
    settings: Any, pg_server: Any, tmp_path: Path
) -> None:
    store = create_store(settings)
    with pytest.raises(BackupError, match=r"holds no manifest\.json"):
        await restore(settings.database_url, store, tmp_path)
    directory = tmp_path / "backup"
    await backup(settings.database_url, store, directory, release="record@test")
    # Into the database it came from: not empty.
    with pytest.raises(BackupError, match="not empty"):
        await restore(settings.database_url, store, directory)
    # Into a database without pgvector: the provisioner's step is missing.
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE bare_{tmp_path.name[-8:].lower()} OWNER {ROLES.owner}")
    bare = pg_server.url(f"bare_{tmp_path.name[-8:].lower()}")
    try:
        with pytest.raises(BackupError, match="no extension vector: provision it first"):
            await restore(bare, store, directory)
        # A damaged dump is found before anything is restored.
        with (directory / "database.dump").open("r+b") as handle:
            handle.seek(100)
            handle.write(b"\0\0\0\0")
        with pytest.raises(BackupError, match="damaged"):
            await restore(bare, store, directory)
    finally:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "bare_{tmp_path.name[-8:].lower()}"')


def test_the_commands_report_their_steps_and_say_what_to_do(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import app
    from app.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", as_role(settings.database_url, ROLES.owner))
    monkeypatch.setenv("STATE_DIR", str(settings.state_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["db", "backup", "--to", str(tmp_path / "b")])
        assert result.exit_code == 0, result.output
        assert "Backed up" in result.output
        assert (tmp_path / "b" / "manifest.json").is_file()
        result = runner.invoke(app, ["db", "restore", "--from", str(tmp_path / "b")])
        assert result.exit_code == 1
        assert "not empty" in result.output
        assert "--force" in result.output
    finally:
        get_settings.cache_clear()
