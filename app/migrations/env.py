"""Alembic environment. Migrations are raw SQL (``op.execute``); no ORM models exist.

The URL comes from the settings (``DATABASE_URL``), unless the caller put one in the config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.kit import vector_version
from app.settings import get_settings


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
    scheme, rest = url.split("://", 1)
    return "postgresql+psycopg://" + rest if scheme in {"postgres", "postgresql"} else url


def run_offline() -> None:
    context.configure(url=_url(), literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    # Before any migration: the pgvector the code needs (app/kit/vector_version.py).
    with engine.connect() as connection:
        installed, available = connection.exec_driver_sql(vector_version.VERSIONS_SQL).one()
    vector_version.require(installed, available)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
