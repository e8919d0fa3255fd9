"""The running local stack, as an operator checks it (pytest-testinfra on the local host)."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest
import testinfra

from app.devstack.servers import SERVICE_USER
from tests.stack.conftest import RunningStack, start_stack, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]

host = testinfra.get_host("local://")


def children_of(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(p) for p in Path(path).read_text().split()]


def gunicorn_master(stack: RunningStack) -> int | None:
    for pid in children_of(stack.proc.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(part.endswith(b"gunicorn") for part in cmdline):
            return pid
    return None


def test_dev_env_key_lists_no_recordings_and_anonymous_is_401(stack: RunningStack):
    env = stack.dev_env()
    assert set(env) == {
        "RECORD_API_URL",
        "RECORD_API_KEY",
        "RECORD_ORG_ID",
        "RECORD_REDIS_URL",
        "RECORD_DATABASE_URL",
    }
    assert env["RECORD_API_URL"] == stack.api_url
    ready = httpx.get(f"{stack.api_url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    headers = {"Authorization": f"Bearer {env['RECORD_API_KEY']}"}
    response = httpx.get(f"{stack.api_url}/api/recordings", headers=headers, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}
    me = httpx.get(f"{stack.api_url}/api/me", headers=headers, timeout=5).json()
    assert me["org"]["id"] == env["RECORD_ORG_ID"]
    assert me["org"]["name"] == "demo"
    assert me["org"]["role"] == "owner"
    anonymous = httpx.get(f"{stack.api_url}/api/recordings", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"


def test_the_api_and_the_worker_log_in_as_roles_that_own_nothing(stack: RunningStack):
    import psycopg

    # dev.env's URL is the owner's (migrations and the demo org run as it), not a superuser's.
    with psycopg.connect(stack.dev_env()["RECORD_DATABASE_URL"]) as conn:
        assert conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == ("record", False)
        sessions = set(
            conn.execute(
                "SELECT application_name, usename FROM pg_stat_activity "
                "WHERE datname = 'record' AND application_name LIKE 'record%'"
            ).fetchall()
        )
    assert ("record", "record_api") in sessions
    assert ("record-worker", "record_worker") in sessions
    assert {user for _, user in sessions} <= {"record_api", "record_worker", "record"}


def test_listening_sockets(stack: RunningStack):
    api = host.socket(f"tcp://127.0.0.1:{stack.api_port}")
    assert api.is_listening
    assert not host.socket(f"tcp://0.0.0.0:{stack.api_port}").is_listening
    assert not host.socket(f"tcp://:::{stack.api_port}").is_listening
    assert host.socket(f"tcp://127.0.0.1:{stack.valkey_port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{stack.valkey_port}").is_listening
    # PostgreSQL: a Unix socket only, nothing on TCP.
    run_dir = stack.state / "run"
    assert host.socket(f"unix://{run_dir}/.s.PGSQL.5432").is_listening
    postmaster = next(
        pid
        for pid in children_of(stack.proc.pid)
        if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    )
    postgres_pids = {postmaster, *children_of(postmaster)}
    assert postgres_pids
    tcp = host.check_output("ss -Hltnp")
    for pid in postgres_pids:
        assert f"pid={pid}," not in tcp


def test_supervised_processes(stack: RunningStack):
    names = []
    for pid in children_of(stack.proc.pid):
        names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    assert "postgres" in names
    assert any(name.startswith("valkey") for name in names)
    master = gunicorn_master(stack)
    assert master is not None
    assert len(children_of(master)) == 2  # WEB_CONCURRENCY workers
    if os.geteuid() == 0:
        # PostgreSQL refuses root; the stack runs it as an unprivileged service user.
        import pwd

        uid = pwd.getpwnam(SERVICE_USER).pw_uid
        postgres = [
            pid
            for pid in children_of(stack.proc.pid)
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
        ]
        assert postgres
        assert all(os.stat(f"/proc/{pid}").st_uid == uid for pid in postgres)


def test_the_model_server_wants_its_own_key(stack: RunningStack):
    models = f"http://127.0.0.1:{stack.env['LOCAL_MODELS_PORT']}"
    assert wait_until(lambda: httpx.get(f"{models}/healthz").status_code == 200, timeout=120)
    assert httpx.get(f"{models}/v1/models").status_code == 401
    assert (
        httpx.get(f"{models}/v1/models", headers={"Authorization": "Bearer local"}).status_code
        == 401
    )
    key = (stack.state / "secrets" / "models").read_text().strip()
    assert len(key) >= 24
    answer = httpx.get(f"{models}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200


def test_secret_modes(stack: RunningStack):
    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(stack.state / "dev.env") == 0o600
    assert mode(stack.state / "secrets") == 0o700
    for secret in (stack.state / "secrets").iterdir():
        assert mode(secret) == 0o600, secret
    assert mode(stack.state / "valkey" / "valkey.conf") == 0o600
    assert mode(stack.state / "pg") == 0o700
    assert mode(stack.state / "logs") == 0o700
    # Nobody else can list the state directory.
    assert mode(stack.state) & 0o044 == 0
    assert host.file(str(stack.state / "dev.env")).user == "root" or os.geteuid() != 0


def test_killed_api_worker_comes_back(stack: RunningStack):
    master = gunicorn_master(stack)
    assert master is not None
    victim = children_of(master)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(
        lambda: victim not in children_of(master) and len(children_of(master)) == 2, timeout=15
    )
    assert wait_until(lambda: httpx.get(f"{stack.api_url}/readyz", timeout=2).status_code == 200)


def test_killed_api_master_is_restarted(stack: RunningStack):
    master = gunicorn_master(stack)
    assert master is not None
    old_workers = children_of(master)
    started = time.monotonic()
    os.kill(master, signal.SIGKILL)
    # Its workers die with it (no orphans left serving on the shared socket)...
    assert wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in old_workers), timeout=20
    )
    assert wait_until(lambda: gunicorn_master(stack) not in (None, master), timeout=20)
    assert wait_until(
        lambda: httpx.get(f"{stack.api_url}/readyz", timeout=2).status_code == 200, timeout=30
    )
    assert time.monotonic() - started < 30
    assert "api exited" in stack.log.read_text()


def test_stop_is_clean_and_restart_keeps_data(stack: RunningStack, stack_dir):
    env = stack.dev_env()
    headers = {"Authorization": f"Bearer {env['RECORD_API_KEY']}"}
    created = httpx.post(
        f"{stack.api_url}/api/orgs/{env['RECORD_ORG_ID']}/api-keys",
        json={"name": "survives restarts", "role": "reader"},
        headers=headers,
        timeout=5,
    )
    assert created.status_code == 201
    reader_key = created.json()["key"]
    children = children_of(stack.proc.pid)
    assert stack.stop() == 0
    for pid in children:
        stat_path = Path(f"/proc/{pid}/stat")
        assert not stat_path.exists() or stat_path.read_text().split()[2] == "Z"
    assert "stopped" in stack.log.read_text()

    again = start_stack(stack_dir, stack.api_port, stack.valkey_port)
    try:
        assert again.dev_env()["RECORD_API_KEY"] == env["RECORD_API_KEY"]  # the key is kept
        response = httpx.get(
            f"{again.api_url}/api/recordings",
            headers={"Authorization": f"Bearer {reader_key}"},
            timeout=5,
        )
        assert response.status_code == 200
    finally:
        assert again.stop() == 0
