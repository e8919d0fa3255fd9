"""Logs as they are really written: the structlog + stdlib pipeline, captured from stderr."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog

from app.kit.logging import configure_logging, get_logger, redact_secrets
from tests.app.conftest import PASSWORD, make_tenant
from tests.app.security.helpers import running_app


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    # Back to the quiet test configuration for whatever runs next.
    configure_logging(level="WARNING", json=False)


async def test_request_lines_carry_request_org_user_and_route(settings, capsys) -> None:
    async with running_app(settings, environment="production", log_level="INFO") as http:
        tenant = await make_tenant(http)
        capsys.readouterr()
        response = await http.get(
            "/api/recordings/3f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b",
            headers={**tenant.auth(), "X-Request-ID": "req-abc-12345"},
        )
        assert response.status_code == 404
    lines = [r for r in _json_lines(capsys.readouterr().err) if r.get("request_id")]
    assert {r["event"] for r in lines} >= {"request refused", "request"}
    for record in lines:
        assert record["request_id"] == "req-abc-12345"
        assert record["org_id"] == tenant.org_id
        assert record["user_id"] == tenant.user_id
        assert record["route"] == "/api/recordings/{recording_id}"
        assert record["timestamp"].endswith("Z")
    access = next(r for r in lines if r["event"] == "request")
    assert access["status"] == 404
    assert access["logger"] == "record.access"


async def test_secrets_never_reach_the_log(settings, capsys) -> None:
    async with running_app(settings, environment="production", log_level="DEBUG") as http:
        tenant = await make_tenant(http)
        response = await http.post(
            "/api/auth/login", json={"email": tenant.email, "password": PASSWORD}
        )
        session = response.json()["session_token"]
        wrong = "wrong-password-that-is-secret-77"
        await http.post("/api/auth/login", json={"email": tenant.email, "password": wrong})
        await http.get("/api/me", headers=tenant.auth())
        await http.get("/api/me", headers={"Authorization": "Bearer rk_not_a_real_key_123456"})
        await http.get(f"/api/me?token={session}", headers={"X-Record-Org": tenant.org_id})
        # And a careless line in application code.
        get_logger("record.test").info(
            "careless", password=PASSWORD, headers={"Authorization": f"Bearer {session}"}
        )
        logging.getLogger("uvicorn.error").warning(
            'GET /api/me?api_key=%s "Authorization: Bearer %s"', tenant.owner_key, session
        )
        # A share link's id is a credential too, even for a link that does not exist.
        link = "Zq8x" * 8
        assert (await http.get(f"/s/{link}")).status_code == 404
    output = capsys.readouterr().err
    assert output.count("\n") > 5  # the pipeline really wrote lines
    assert '"route": "/s/{share_id}"' in output
    for secret in (PASSWORD, wrong, tenant.owner_key, session, "rk_not_a_real_key_123456", link):
        assert secret not in output
    assert "[REDACTED]" in output


@pytest.mark.parametrize(
    ("event", "forbidden"),
    [
        ({"password": "p4ss"}, "p4ss"),
        ({"api_key": "k3y"}, "k3y"),
        ({"headers": {"authorization": "Basic dXNlcjpwYXNz"}}, "dXNlcjpwYXNz"),
        ({"event": "url postgresql://app:s3cr3t@db/x"}, "s3cr3t"),
        ({"event": "GET /x?access_token=abc123&a=1"}, "abc123"),
        ({"event": 'body {"password": "hunter22"}'}, "hunter22"),
        ({"event": "jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}, "c2lnbmF0dXJl"),
        ({"items": ["Bearer abc.def.ghi"]}, "abc.def.ghi"),
    ],
)
def test_redaction_processor(event: dict[str, Any], forbidden: str) -> None:
    assert forbidden not in json.dumps(redact_secrets(None, "info", dict(event)))


def test_redaction_keeps_harmless_fields() -> None:
    event = redact_secrets(None, "info", {"tokens": 42, "prompt_tokens": 7, "route": "/x"})
    assert event == {"tokens": 42, "prompt_tokens": 7, "route": "/x"}


def test_json_in_production_console_in_development(capsys) -> None:
    configure_logging(level="INFO", json=True)
    get_logger("record.test", job_id="j1").info("hello", n=1)
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record == {
        "event": "hello",
        "job_id": "j1",
        "n": 1,
        "level": "info",
        "logger": "record.test",
        "timestamp": record["timestamp"],
    }
    configure_logging(level="INFO", json=False)
    get_logger("record.test").info("hello")
    line = capsys.readouterr().err.strip()
    assert not line.startswith("{")
    assert "hello" in line


def test_log_level_is_honoured(capsys) -> None:
    configure_logging(level="WARNING", json=True)
    log = get_logger("record.test")
    log.info("quiet")
    log.warning("loud")
    logging.getLogger("gunicorn.error").info("quiet too")
    events = [r["event"] for r in _json_lines(capsys.readouterr().err)]
    assert events == ["loud"]


def test_child_loggers_keep_their_context(capsys) -> None:
    configure_logging(level="INFO", json=True)
    parent = get_logger("record.jobs", job_id="j9")
    child = parent.bind(step="transcribe")
    child.info("step done")
    parent.info("job done")
    first, second = _json_lines(capsys.readouterr().err)[-2:]
    assert (first["job_id"], first["step"]) == ("j9", "transcribe")
    assert second["job_id"] == "j9"
    assert "step" not in second


def test_server_logs_share_the_format(capsys) -> None:
    configure_logging(level="INFO", json=True)
    for name in ("gunicorn.error", "uvicorn.error", "gunicorn.access"):
        logging.getLogger(name).info("from %s", name)
    records = _json_lines(capsys.readouterr().err)
    assert [r["logger"] for r in records] == ["gunicorn.error", "uvicorn.error", "gunicorn.access"]
    assert all(r["event"] == f"from {r['logger']}" for r in records)
    assert all({"timestamp", "level"} <= set(r) for r in records)


def test_exceptions_are_rendered_in_json(capsys) -> None:
    configure_logging(level="INFO", json=True)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.stdlib.get_logger("record.test").exception("failed")
    record = _json_lines(capsys.readouterr().err)[-1]
    assert "ValueError: boom" in record["exception"]


def test_gunicorn_conf(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import importlib
    import sys

    from app.settings import get_settings

    monkeypatch.setenv("BIND", "0.0.0.0:9000")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8,192.168.0.1")
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    get_settings.cache_clear()
    sys.modules.pop("app.gunicorn_conf", None)
    try:
        conf = importlib.import_module("app.gunicorn_conf")
        assert conf.bind == ["0.0.0.0:9000"]
        assert conf.workers == 3
        assert conf.worker_class == "uvicorn_worker.UvicornWorker"
        assert conf.forwarded_allow_ips == "10.0.0.0/8,192.168.0.1"
        assert conf.graceful_timeout == 30
        formatter = conf.logconfig_dict["formatters"]["structlog"]
        assert type(formatter["processors"][-1]).__name__ == "JSONRenderer"
        (tmp_path / "prom").mkdir()
        (tmp_path / "prom" / "counter_123.db").write_bytes(b"stale")
        conf.on_starting(None)
        assert list((tmp_path / "prom").iterdir()) == []

        class Worker:
            pid = 4242

        conf.child_exit(None, Worker())
    finally:
        sys.modules.pop("app.gunicorn_conf", None)
        get_settings.cache_clear()


@pytest.mark.parametrize("json_lines", [True, False])
def test_secrets_in_exception_messages_are_redacted_in_both_formats(capsys, json_lines) -> None:
    configure_logging(level="INFO", json=json_lines)
    try:
        secret = "rk_" + "S3cr3tKeyMaterial" * 2
        try:
            raise RuntimeError(f"upstream refused Authorization: Bearer {secret}")
        except RuntimeError:
            get_logger("test.redaction").exception("call failed")
        err = capsys.readouterr().err
        assert "call failed" in err
        assert "RuntimeError" in err
        assert secret not in err
        assert "S3cr3tKeyMaterial" not in err
    finally:
        configure_logging(level="WARNING", json=False)
