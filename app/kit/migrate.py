"""Alembic, driven from code: `record db upgrade`, the local stack, the tests and /readyz."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        # ConfigParser treats % as interpolation: escape it in URLs with encoded characters.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def upgrade_sql(revision: str = "head") -> str:
    """The SQL `alembic upgrade --sql` prints (offline mode), for review and linting."""
    import contextlib
    import io

    buffer = io.StringIO()
    config = alembic_config("postgresql+psycopg://offline@localhost/offline")
    config.output_buffer = buffer
    with contextlib.redirect_stdout(buffer):
        command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    """The code's head revision(s). Cached: the migration files don't change while we run,
    and /readyz asks on every probe."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())
