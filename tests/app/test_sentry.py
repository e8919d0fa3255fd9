"""Error tracking: what Sentry would receive, kept in memory by a transport of the test's own.

The app and the worker run for real (the database, Valkey, procrastinate); only the network to
Sentry is replaced. Every envelope is checked as the bytes that would leave the process.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import sentry_sdk
from fastapi import FastAPI, Request
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from app.jobs.queue import MAIL_QUEUE, MAIL_TASK
from app.kit.db import Database
from app.kit.sentry import configure_error_tracking, report_job_failures
from app.mail.sender import FileMailer
from app.main import create_app
from tests.app.security.helpers import running_app
from tests.conftest import ROLES, as_login
from worker.jobs import STATE, build_app
from worker.mail import MailDeps

DSN = SecretStr("https://0123456789abcdef@sentry.example.invalid/42")
RELEASE = "record@4f3c2a1b9d0e"  # as the image's RECORD_RELEASE names its commit


class MemoryTransport(Transport):
    """Keeps what would be sent."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def serialized(self) -> bytes:
        return b"".join(envelope.serialize() for envelope in self.envelopes)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for envelope in self.envelopes:
            for item in envelope.items:
                if item.type == "event":
                    found.append(json.loads(item.payload.get_bytes()))
        return found


@pytest.fixture
def transport() -> Iterator[MemoryTransport]:
    memory = MemoryTransport()
    yield memory
    # Sentry is process-wide: the next test starts without it.
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def secret_values() -> dict[str, str]:
    return {
        "session": f"rs_{secrets.token_urlsafe(24)}",
        "api_key": f"rk_{secrets.token_urlsafe(24)}",
        "share_id": secrets.token_urlsafe(16),
        "email": f"ada.{secrets.token_hex(4)}@example.com",
        "password": f"pw-{secrets.token_hex(8)}",
        "invite": f"ri_{secrets.token_urlsafe(24)}",
    }


def assert_nothing_secret(body: bytes, values: dict[str, str]) -> None:
    for name, value in values.items():
        for form in {value, quote(value, safe=""), json.dumps(value)[1:-1]}:
            assert form.encode() not in body, f"the {name} left the process"


def add_leaky_route(app: FastAPI, values: dict[str, str]) -> None:
    """A route that fails with every kind of secret in its exception's text."""

    @app.post("/api/test-only/leak/s/{share_id}/{address}")
    async def leak(share_id: str, address: str, request: Request) -> None:
        await request.body()
        raise RuntimeError(
            f"could not serve /s/{share_id} to {address}: "
            f"Authorization: Bearer {values['session']}, key {values['api_key']}, "
            f"?token={values['session']}, password={values['password']}"
        )


async def test_an_unhandled_error_is_reported_with_nothing_secret(
    settings: Any, transport: MemoryTransport, secret_values: dict[str, str]
) -> None:
    v = secret_values
    async with running_app(
        settings, customize=lambda app: add_leaky_route(app, v), environment="production"
    ) as http:
        # The app was made without a DSN; start Sentry as create_app would, over memory.
        started = configure_error_tracking(
            settings.model_copy(
                update={
                    "sentry_dsn": DSN,
                    "sentry_environment": "staging",
                    "record_release": RELEASE,
                }
            ),
            component="api",
            transport=transport,
        )
        assert started
        response = await http.post(
            f"/api/test-only/leak/s/{v['share_id']}/{v['email']}",
            params={"token": v["session"], "api_key": v["api_key"], "email": v["email"]},
            headers={
                "Authorization": f"Bearer {v['session']}",
                "X-Api-Key": v["api_key"],
                "Cookie": f"session={v['session']}",
                "Referer": f"http://testserver/s/{v['share_id']}?email={v['email']}",
                "X-Request-ID": "req-sentry-1",
            },
            json={"email": v["email"], "password": v["password"], "key": v["api_key"]},
        )
        assert response.status_code == 500
        sentry_sdk.flush()

    [event] = transport.events()
    assert event["release"] == RELEASE
    assert event["environment"] == "staging"
    assert event["tags"]["component"] == "api"
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    # The FastAPI integration describes the request, by its route template.
    assert event["transaction"] == "/api/test-only/leak/s/{share_id}/{address}"
    assert event["request"]["method"] == "POST"
    assert "[REDACTED" in event["exception"]["values"][-1]["value"]
    assert "data" not in event["request"]  # no body, as in the logs
    # Traces are OpenTelemetry's: the event and release health's counts, no transaction.
    assert {item.type for e in transport.envelopes for item in e.items} <= {"event", "sessions"}
    assert_nothing_secret(transport.serialized(), v)


async def test_a_job_that_failed_for_good_is_reported_without_its_arguments(
    settings: Any, transport: MemoryTransport, secret_values: dict[str, str], tmp_path: Any
) -> None:
    v = secret_values
    worker_settings = settings.model_copy(
        update={"job_max_attempts": 1, "sentry_dsn": DSN, "record_release": RELEASE}
    )
    assert configure_error_tracking(worker_settings, component="worker", transport=transport)
    # A mail job whose kind is unknown: it fails on its one attempt, and its arguments (an
    # address, a mailed link's token) reach the exception's text and procrastinate's lines.
    args = {
        "kind": f"invite {v['email']} {v['invite']}",
        "to": v["email"],
        "link": f"http://testserver/invite/{v['invite']}",
    }
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, 0, NULL, NULL, %s::jsonb, NULL)"
            "::procrastinate_job_to_defer_v1])",
            (MAIL_QUEUE, MAIL_TASK, json.dumps(args)),
        )
    db = Database(worker_settings)
    await db.open()
    STATE.mail = MailDeps(worker_settings, db, FileMailer(tmp_path))
    procrastinate_log = logging.getLogger("procrastinate")
    level = procrastinate_log.level
    procrastinate_log.setLevel(logging.INFO)  # its "Starting job ..." lines become breadcrumbs
    try:
        jobs = build_app(as_login(worker_settings, ROLES.worker))
        async with jobs.open_async():
            await jobs.run_worker_async(
                queues=[MAIL_QUEUE],
                wait=False,
                install_signal_handlers=False,
                concurrency=1,
                listen_notify=False,
                worker_middleware=[report_job_failures],
            )
    finally:
        procrastinate_log.setLevel(level)
        STATE.mail = None
        await db.close()
    sentry_sdk.flush()

    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT status FROM procrastinate_jobs").fetchone()
    assert row == ("failed",)
    [event] = transport.events()  # once: procrastinate's own error line is a breadcrumb
    assert event["release"] == RELEASE
    assert event["tags"]["component"] == "worker"
    assert event["tags"]["job.task"] == MAIL_TASK
    assert event["tags"]["job.attempts"] == "1"
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    crumbs = [c.get("message", "") for c in event["breadcrumbs"]["values"]]
    assert any("Starting job" in c for c in crumbs), crumbs
    assert_nothing_secret(transport.serialized(), v)


async def test_a_job_to_be_retried_is_not_reported(
    settings: Any, transport: MemoryTransport
) -> None:
    worker_settings = settings.model_copy(update={"job_max_attempts": 3, "sentry_dsn": DSN})
    assert configure_error_tracking(worker_settings, component="worker", transport=transport)
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, 0, NULL, NULL, %s::jsonb, NULL)"
            "::procrastinate_job_to_defer_v1])",
            (MAIL_QUEUE, MAIL_TASK, json.dumps({"kind": "no-such-kind"})),
        )
    db = Database(worker_settings)
    await db.open()
    STATE.mail = MailDeps(worker_settings, db, FileMailer(settings.state_dir / "mail"))
    try:
        jobs = build_app(as_login(worker_settings, ROLES.worker))
        async with jobs.open_async():
            await jobs.run_worker_async(
                queues=[MAIL_QUEUE],
                wait=False,
                install_signal_handlers=False,
                concurrency=1,
                listen_notify=False,
                worker_middleware=[report_job_failures],
            )
    finally:
        STATE.mail = None
        await db.close()
    sentry_sdk.flush()
    assert transport.events() == []


def test_without_a_dsn_nothing_starts(settings: Any) -> None:
    create_app(settings)
    assert not sentry_sdk.get_client().is_active()
    assert configure_error_tracking(settings, component="worker") is False


def test_with_a_dsn_create_app_starts_it_errors_only(settings: Any, transport: Any) -> None:
    create_app(
        settings.model_copy(update={"sentry_dsn": DSN, "record_release": RELEASE}),
    )
    client = sentry_sdk.get_client()
    assert client.is_active()
    options = client.options
    assert options["release"] == RELEASE
    assert options["environment"] == "test"  # ENVIRONMENT, when SENTRY_ENVIRONMENT is unset
    assert options["traces_sample_rate"] is None
    assert options["trace_propagation_targets"] == []
    assert options["data_collection"]["user_info"] is False  # no cookies, addresses, users
    assert options["data_collection"]["stack_frame_variables"] is False
    assert options["max_request_body_size"] == "never"
