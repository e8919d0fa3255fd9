"""The database's roles: one owns the schema, the processes that serve log in as roles that own
nothing.

``record_app`` (no login) holds the rights a request needs; row-level security decides the rows.
``record_jobs`` (no login, a member of ``record_app``) adds what procrastinate's worker needs on
its queue tables. ``record_queue_reader`` (no login) may read one number: how many jobs wait or
run (the ``app_queue_depth`` view, migration 0008). Each deployment has four login roles named
after its owner role:

- ``<owner>``: owns the database and every table, runs the migrations (the migration Job).
- ``<owner>_api``: the API; a member of ``record_app`` only.
- ``<owner>_worker``: the worker; a member of ``record_jobs`` only.
- ``<owner>_keda``: KEDA's operator, which scales the worker on the queue's depth; a member of
  ``record_queue_reader`` only. It connects from outside Record's pods (without the RDS CA
  bundle the app image carries, so without verifying the server), hence a login that can
  learn nothing else.

None of them is a superuser or may create roles or databases, and the runtime roles own
nothing, so a ``RESET ROLE`` or ``SET ROLE`` smuggled into a query finds no owner's rights to
return to: RLS binds the login role itself. The group roles are cluster-wide (preview databases
share an instance with their base stack); the logins are per deployment, and each may connect to
its own database only.

:func:`provision` creates all of this. It runs as a role with CREATEROLE and CREATEDB (the RDS
master, ``infra/db_bootstrap.py``) or as a superuser (``record up``, the tests), and is
idempotent. PostgreSQL 16 lets a CREATEROLE role manage only the roles it has ADMIN OPTION on --
those it created -- and create a database for an owner only if it may ``SET ROLE`` to it, which
is why the provisioner, not a migration, creates the roles.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from app.kit import vector_version

APP_ROLE = "record_app"
JOBS_ROLE = "record_jobs"
QUEUE_READER_ROLE = "record_queue_reader"

_IDENT_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def checked_identifier(name: str) -> str:
    """Role and database names go into DDL: lower-case letters, digits and ``_`` only."""
    if not name or not set(name) <= _IDENT_CHARS or name[0].isdigit() or len(name) > 63:
        raise ValueError(f"refusing identifier {name!r}: lower-case letters, digits, _ only")
    return name


@dataclass(frozen=True)
class LoginRoles:
    """A deployment's login roles, named after its owner role."""

    owner: str

    def __post_init__(self) -> None:
        for name in self.all:
            checked_identifier(name)

    @property
    def api(self) -> str:
        return f"{self.owner}_api"

    @property
    def worker(self) -> str:
        return f"{self.owner}_worker"

    @property
    def keda(self) -> str:
        return f"{self.owner}_keda"

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.owner, self.api, self.worker, self.keda)

    @property
    def memberships(self) -> tuple[tuple[str, str], ...]:
        """(group, member): the only role memberships the runtime roles have."""
        return (
            (APP_ROLE, JOBS_ROLE),
            (APP_ROLE, self.api),
            (JOBS_ROLE, self.worker),
            (QUEUE_READER_ROLE, self.keda),
        )


class UnsafeRole(RuntimeError):
    """A login role has an attribute that would let it bypass row-level security."""


def _role(conn: psycopg.Connection[tuple[object, ...]], name: str) -> tuple[bool, ...] | None:
    row = conn.execute(
        "SELECT rolsuper, rolbypassrls, rolreplication FROM pg_roles WHERE rolname = %s", (name,)
    ).fetchone()
    return None if row is None else tuple(bool(v) for v in row)


# Extensions the owner may not create (pgvector is not a trusted extension): the provisioner
# creates them in the application's database, where the migrations' CREATE EXTENSION IF NOT
# EXISTS then finds them. (name, required): pg_stat_statements is observability, and absent
# from the embedded server.
EXTENSIONS = (("vector", True), ("pg_stat_statements", False))

Connect = Callable[[str], psycopg.Connection[tuple[object, ...]]]


def provision(
    connect: Connect,
    roles: LoginRoles,
    database: str,
    *,
    passwords: Mapping[str, str] | None = None,
) -> None:
    """Create or update the roles, the database (owned by ``roles.owner``) and its extensions.

    ``connect(dbname)`` opens an autocommit connection as the provisioning role. ``passwords``
    maps login role names to their passwords; without it the roles get none (a local server that
    trusts its private socket)."""
    checked_identifier(database)
    with connect("postgres") as conn:
        _roles_and_database(conn, roles, database, passwords)
    with connect(database) as conn:
        available = {
            str(row[0]) for row in conn.execute("SELECT name FROM pg_available_extensions")
        }
        for name, required in EXTENSIONS:
            if required or name in available:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
                )
        _update_vector(conn)


def _update_vector(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """After an engine upgrade the installed pgvector stays at its old version: bring it to the
    server's when it is older than the code needs (the migrations check, app/kit/vector_version)."""
    row = conn.execute(vector_version.VERSIONS_SQL).fetchone()
    installed, offered = (str(v) if v is not None else None for v in (row or (None, None)))
    if (
        installed is not None
        and offered is not None
        and vector_version.parse(installed) < vector_version.NEEDED <= vector_version.parse(offered)
    ):
        conn.execute("ALTER EXTENSION vector UPDATE")


def _grant_membership(
    conn: psycopg.Connection[tuple[object, ...]],
    group: str,
    member: str,
    *,
    owner: str,
    superuser: bool,
) -> None:
    """GRANT group TO member, once. PostgreSQL 16 lets only a role with ADMIN OPTION on the
    group grant it. A group this provisioner created, it holds that on; ``record_app`` made by
    an older set-up (migration 0001 run by the application's login, now the owner role) has
    the owner as its admin, so the grant is made as the owner ("no possible grantors" else)."""
    exists = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_auth_members AS m "
        "JOIN pg_roles AS g ON g.oid = m.roleid JOIN pg_roles AS r ON r.oid = m.member "
        "WHERE g.rolname = %s AND r.rolname = %s)",
        (group, member),
    ).fetchone()
    if exists is not None and exists[0]:
        return
    grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(member))
    try:
        conn.execute(grant)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InternalError_):
        if superuser:
            raise
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        try:
            conn.execute(grant)
        finally:
            conn.execute("RESET ROLE")


def _roles_and_database(
    conn: psycopg.Connection[tuple[object, ...]],
    roles: LoginRoles,
    database: str,
    passwords: Mapping[str, str] | None,
) -> None:
    me = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    current = me.fetchone()
    assert current is not None
    myself, superuser = str(current[0]), bool(current[1])

    for group in (APP_ROLE, JOBS_ROLE, QUEUE_READER_ROLE):
        if _role(conn, group) is None:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
    for login in roles.all:
        if _role(conn, login) is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
        # NOSUPERUSER, NOBYPASSRLS and NOREPLICATION may only be *said* by a superuser, even to
        # a role that lacks them (the RDS master is not one): checked below instead.
        alter = sql.SQL("ALTER ROLE {} LOGIN INHERIT NOCREATEROLE NOCREATEDB").format(
            sql.Identifier(login)
        )
        if passwords is not None:
            alter += sql.SQL(" PASSWORD {}").format(sql.Literal(passwords[login]))
        conn.execute(alter)
        if any(_role(conn, login) or ()):
            raise UnsafeRole(f"role {login} is a superuser or bypasses row-level security")
    if not superuser:
        # PostgreSQL 16: CREATE/ALTER DATABASE ... OWNER needs SET on the owner role. Without
        # INHERIT: the provisioner may act as the owner, but does not hold its rights by default.
        conn.execute(
            sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                sql.Identifier(roles.owner), sql.Identifier(myself)
            )
        )
    for group, member in roles.memberships:
        _grant_membership(conn, group, member, owner=roles.owner, superuser=superuser)

    found = conn.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
    ).fetchone()
    db, owner = sql.Identifier(database), sql.Identifier(roles.owner)
    if found is None:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, owner))
    elif found[0] != roles.owner:
        # RDS creates the first database owned by the master. Its schema public belongs to
        # pg_database_owner (PostgreSQL 15+), so it follows the database to the owner role.
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, owner))
    if not superuser:
        conn.execute(sql.SQL("SET ROLE {}").format(owner))  # the database's ACL is the owner's
    try:
        # Each deployment's logins reach its own database only (previews share an instance).
        # TEMPORARY: the worker stages chunks in a temporary table (transcripts/repository.py).
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}, {}").format(
                db, sql.Identifier(roles.api), sql.Identifier(roles.worker)
            )
        )
        # The logins act as record_app (SET ROLE), and a temporary table is created with the
        # current role's rights: the group needs TEMPORARY too, or every chunk write fails.
        conn.execute(
            sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(db, sql.Identifier(APP_ROLE))
        )
        # KEDA counts the queue: it connects, nothing more (no temporary tables).
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(roles.keda))
        )
        # The provisioner comes back on the next deploy (extensions, a new role).
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(myself))
        )
    finally:
        conn.execute("RESET ROLE")


# What a preview's database and owner role are called (infra/preview.py): the only names
# :func:`drop_preview` will drop, so a mistyped argument cannot reach a base stack's database.
PREVIEW_DATABASE = re.compile(r"record_pr_[0-9]+")


class NotAPreview(ValueError):
    """A drop was asked for a database that is not a preview's, or is owned by another role."""


def preview_name(number: str) -> str:
    """Pull request ``number``'s database and owner role (``infra/preview.py`` names both so)."""
    if not number.isascii() or not number.isdigit():
        raise NotAPreview(f"refusing preview number {number!r}: digits only")
    return f"record_pr_{int(number)}"


def require_preview(roles: LoginRoles, database: str, number: str) -> None:
    """Refuse anything but pull request ``number``'s own database and owner: what a preview's
    provisioner Job may touch, whatever else its environment says. The Job runs as the RDS
    master, which may alter any role it created; without this, a Job naming ``record`` would
    reset the base stack's passwords."""
    expected = preview_name(number)
    if database != expected or roles.owner != expected:
        raise NotAPreview(
            f"refusing {database!r} (owner {roles.owner!r}) for preview {number}: only {expected!r}"
        )


def drop_preview(connect: Connect, roles: LoginRoles, database: str) -> bool:
    """Drop a preview's database, closing the connections still open to it, then its four login
    roles. Idempotent: what is already gone is skipped. Returns whether the database existed.

    Runs as the RDS master (or a superuser). The master may drop a role it created (ADMIN
    OPTION) but a database only as its owner, and ``WITH (FORCE)`` terminates other sessions
    only for a role with the rights of each session's user or of ``pg_signal_backend`` (which
    ``rds_superuser`` holds). ``SET ROLE`` to the owner would give up the second, so the master
    inherits the owner's rights instead, for the moment before the owner role is dropped."""
    checked_identifier(database)
    if not PREVIEW_DATABASE.fullmatch(database) or roles.owner != database:
        raise NotAPreview(f"refusing to drop {database!r} (owner {roles.owner!r}): not a preview")
    with connect("postgres") as conn:
        me = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        current = me.fetchone()
        assert current is not None
        myself, superuser = str(current[0]), bool(current[1])
        found = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if found is not None and found[0] != roles.owner:
            raise NotAPreview(f"refusing to drop {database!r}: owned by {found[0]}, not a preview")
        if found is not None:
            if not superuser:
                conn.execute(
                    sql.SQL("GRANT {} TO {} WITH INHERIT TRUE").format(
                        sql.Identifier(roles.owner), sql.Identifier(myself)
                    )
                )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        # The runtime roles first: the owner may have granted them something.
        for login in (roles.api, roles.worker, roles.keda, roles.owner):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))
    return found is not None
