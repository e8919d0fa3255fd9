"""`record up`: the whole local stack in the foreground, supervised.

Order: embedded PostgreSQL and Valkey (unless DATABASE_URL / REDIS_URL point elsewhere),
migrations to head, the demo org, then the API (gunicorn + uvicorn workers), the worker and the
local model server. A child that dies is restarted with exponential backoff; Ctrl-C or SIGTERM
stops every child, newest first, and waits for each. Data lives in `.record/` and survives.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from app.devstack.servers import PostgresServer, ValkeyServer, service_user_kwargs, socket_dir_for
from app.kit.process import die_with_parent
from app.kit.roles import LoginRoles
from app.settings import Environment, Settings, get_settings

console = Console(stderr=True, highlight=False)

API_HOST = "127.0.0.1"
STOP_TIMEOUT = 15.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a child that ran this long has its backoff reset


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    run_as_service_user: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    one_shot: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us
                preexec_fn=die_with_parent,  # noqa: PLW1509 - single-threaded here
                **(service_user_kwargs() if self.run_as_service_user else {}),
            )
        finally:
            log.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        # Postgres: SIGTERM is "smart" shutdown, which waits for clients; SIGINT is "fast".
        self.proc.send_signal(signal.SIGINT if self.name == "postgres" else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]{self.name} did not stop in {timeout:.0f}s; killing it[/]")
            self.proc.kill()
            self.proc.wait(timeout=5)


class Stack:
    def __init__(self, settings: Settings, *, root: Path) -> None:
        self.settings = settings
        self.root = root
        self.state = (root / settings.state_dir).resolve()
        self.logs = self.state / "logs"
        self.children: list[Child] = []
        self.stopping = False
        # The owner's URL (migrations, the demo org, dev.env); the API and the worker log in as
        # their own roles when the stack runs its own PostgreSQL. A DATABASE_URL of yours is
        # used for all three: its roles are yours to arrange (app/kit/roles.py).
        self.database_url = settings.database_url
        self.api_database_url = self.worker_database_url = settings.database_url
        self.redis_url = settings.redis_url
        self.embedded_pg = "database_url" not in settings.model_fields_set
        self.embedded_valkey = "redis_url" not in settings.model_fields_set

    # -- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        # Others may traverse (the database runs as its own user) but not list.
        os.chmod(self.state, 0o711)  # noqa: S103 - traverse-only, no read
        self.logs.mkdir(exist_ok=True)
        os.chmod(self.logs, 0o700)

    def secret(self, name: str) -> str:
        """A local secret, generated once and kept in a 0600 file."""
        path = self.state / "secrets" / name
        path.parent.mkdir(exist_ok=True)
        os.chmod(path.parent, 0o700)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECORD_",))}
        env.update(
            DATABASE_URL=self.api_database_url,
            REDIS_URL=self.redis_url,
            ENVIRONMENT=self.settings.environment.value,
            STATE_DIR=str(self.state),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        if self.settings.api_docs_enabled is None:
            # The local stack shows /docs whatever ENVIRONMENT is (production's default is off);
            # API_DOCS_ENABLED=false in the environment still turns them off.
            env["API_DOCS_ENABLED"] = "true"
        if "public_url" not in self.settings.model_fields_set:
            # Share links point at this stack's API, whatever port it was given.
            env["PUBLIC_URL"] = f"http://{API_HOST}:{self.settings.local_api_port}"
        if "openai_base_url" not in self.settings.model_fields_set and self.models_available():
            env["OPENAI_BASE_URL"] = f"http://{API_HOST}:{self.settings.local_models_port}/v1"
            env["OPENAI_API_KEY"] = self.secret("models")  # the local model server's own key
        return env

    def add(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        console.print(
            f"[green]started[/] {child.name} (pid {child.proc.pid if child.proc else '?'})"
        )
        return child

    def start_postgres(self) -> None:
        server = PostgresServer(
            data_dir=self.state / "pg", socket_dir=socket_dir_for(self.state / "pg")
        )
        if server.initdb():
            console.print(f"created PostgreSQL cluster in {server.data_dir}")
        self.add(
            Child(
                "postgres",
                server.command(),
                dict(os.environ),
                self.logs / "postgres.log",
                run_as_service_user=True,
            )
        )
        wait_for(server.is_ready, "PostgreSQL", timeout=30, alive=self.children[-1].alive)
        roles = LoginRoles("record")
        server.provision(roles, "record")
        self.database_url = server.as_role(roles.owner).url("record")
        self.api_database_url = server.as_role(roles.api).url("record")
        self.worker_database_url = server.as_role(roles.worker).url("record")

    def start_valkey(self) -> None:
        server = ValkeyServer(
            data_dir=self.state / "valkey",
            port=self.settings.local_valkey_port,
            password=self.secret("valkey"),
        )
        self.add(Child("valkey", server.command(), dict(os.environ), self.logs / "valkey.log"))
        self.redis_url = server.url

        def ready() -> bool:
            import redis

            try:
                return bool(redis.Redis.from_url(server.url, socket_timeout=0.5).ping())
            except redis.RedisError:
                return False

        wait_for(ready, "Valkey", timeout=15, alive=self.children[-1].alive)

    def migrate(self) -> None:
        from app.kit.migrate import upgrade

        with console.status("applying migrations"):
            upgrade(self.database_url)
        console.print("[green]migrations at head[/]")

    def models_available(self) -> bool:
        import importlib.util

        return all(
            importlib.util.find_spec(name) is not None
            for name in ("faster_whisper", "sentence_transformers", "app.ai.cli")
        )

    def start_services(self) -> None:
        env = self.base_env()
        metrics_dir = self.state / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # stale samples of dead processes
        metrics_dir.mkdir(mode=0o700)
        api_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        bindir = Path(sys.executable).parent
        record = str(bindir / "record")
        if self.models_available():
            self.add(
                Child(
                    "models",
                    [
                        record,
                        "models",
                        "serve",
                        "--host",
                        API_HOST,
                        "--port",
                        str(self.settings.local_models_port),
                    ],
                    {**env, "MODEL_SERVER_API_KEY": self.secret("models")},
                    self.logs / "models.log",
                )
            )
        self.add(
            Child(
                "api",
                [
                    str(bindir / "gunicorn"),
                    "app.main:create_app()",
                    "--bind",
                    f"{API_HOST}:{self.settings.local_api_port}",
                    "--workers",
                    os.environ.get("WEB_CONCURRENCY", "2"),
                    "--worker-class",
                    "uvicorn_worker.UvicornWorker",
                    # One control socket per user by default: two stacks on a machine collide.
                    "--no-control-socket",
                    *(
                        ["-c", "python:app.gunicorn_conf"]
                        if _has_module("app.gunicorn_conf")
                        else []
                    ),
                ],
                api_env,
                self.logs / "api.log",
            )
        )
        if _has_module("worker.main"):
            # Locally the worker's samples go to the API's multiprocess directory (so the API's
            # /metrics shows them); no second metrics port to collide with.
            worker_env = {
                **api_env,
                "WORKER_METRICS_PORT": "0",
                "DATABASE_URL": self.worker_database_url,
            }
            self.add(Child("worker", [record, "worker"], worker_env, self.logs / "worker.log"))

    def wait_ready(self) -> None:
        url = f"http://{API_HOST}:{self.settings.local_api_port}/readyz"

        def ready() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        with console.status("waiting for the API to be ready"):
            wait_for(ready, "the API", timeout=60, alive=lambda: self.by_name("api").alive())

    def by_name(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def bootstrap(self) -> dict[str, str]:
        """The demo org, its owner and an owner API key (the one in dev.env, while it works)."""
        from app.devstack.bootstrap import ensure_demo

        previous = read_env_file(self.state / "dev.env").get("RECORD_API_KEY")
        demo = ensure_demo(self.database_url, previous_key=previous)
        return {
            "RECORD_API_URL": f"http://{API_HOST}:{self.settings.local_api_port}",
            "RECORD_API_KEY": demo.api_key,
            "RECORD_ORG_ID": str(demo.org_id),
            "RECORD_REDIS_URL": self.redis_url,
            "RECORD_DATABASE_URL": self.database_url,
        }

    def write_dev_env(self, values: dict[str, str]) -> None:
        env_path = self.state / "dev.env"
        write_env_file(env_path, values)
        console.print(f"[green]wrote[/] {env_path} (mode 0600): `source {env_path}` to use it")

    # -- running ------------------------------------------------------------------------------

    def supervise(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if self.stopping or child.alive():
                    if child.alive() and now - child.started_at > STABLE_AFTER:
                        child.backoff = 1.0
                    continue
                if child.next_start == 0.0:
                    code = child.proc.returncode if child.proc else None
                    child.next_start = now + child.backoff
                    console.print(
                        f"[red]{child.name} exited ({code}); restarting in {child.backoff:.0f}s[/]"
                        f" (log: {child.log_path})"
                    )
                elif now >= child.next_start:
                    child.next_start = 0.0
                    child.restarts += 1
                    child.backoff = min(child.backoff * 2, MAX_BACKOFF)
                    child.start()
                    console.print(f"[green]restarted[/] {child.name} (restart {child.restarts})")
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping = True
        for child in reversed(self.children):
            if child.alive():
                console.print(f"stopping {child.name}")
            child.stop()
        console.print("[green]stopped[/]")


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def wait_for(
    check: Callable[[], bool], what: str, *, timeout: float, alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise RuntimeError(f"{what} exited while starting; see its log under .record/logs")
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f}s; see .record/logs")


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# Written by `record up`. Secrets: keep this file private (mode 0600).\n")
        for key, value in values.items():
            handle.write(f"export {key}='{value}'\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def development_unless_set(settings: Settings) -> Settings:
    """The local stack runs in development (a 500 says what failed, logs read as text) unless
    ENVIRONMENT says otherwise. Settings default to production, so that a deployment which
    forgets ENVIRONMENT never shows exception text to its callers."""
    if "environment" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"environment": Environment.development})


def run_stack(root: Path | None = None) -> int:
    from app.kit.logging import configure_logging

    settings = development_unless_set(get_settings())
    configure_logging(level=settings.log_level, json=settings.is_production)
    stack = Stack(settings, root=root or Path.cwd())

    def on_signal(signum: int, _frame: object) -> None:
        if not stack.stopping:
            console.print(f"\n{signal.Signals(signum).name}: stopping the stack")
        stack.stopping = True
        if not supervising:
            # Still starting up: leave whatever wait we are in; `finally` stops the children.
            raise KeyboardInterrupt

    supervising = False
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.prepare()
        if stack.embedded_pg:
            stack.start_postgres()
        if stack.embedded_valkey:
            stack.start_valkey()
        stack.migrate()
        dev_env = stack.bootstrap()
        stack.start_services()
        stack.wait_ready()
        stack.write_dev_env(dev_env)
        console.print(
            f"[bold green]Record is up[/] at http://{API_HOST}:{settings.local_api_port} "
            f"(docs: /docs). Ctrl-C stops it."
        )
        supervising = True
        stack.supervise()
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        stack.stop()
    return 0
