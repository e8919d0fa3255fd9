"""The production mail path: SmtpMailer against a real SMTP server on loopback (aiosmtpd stands
in for Amazon SES's SMTP endpoint; STARTTLS is SES's part and is off here)."""

from __future__ import annotations

import socket
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from app.mail.sender import SmtpMailer, compose, create_mailer
from app.settings import Settings


class Inbox:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eml_files(directory: Path) -> list[Path]:
    return list(directory.glob("**/*.eml"))


def smtp_settings(tmp_path: Path, port: int) -> Settings:
    return Settings(
        environment="test",
        state_dir=tmp_path,
        mail_backend="smtp",
        mail_from="Record <no-reply@record.example>",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        smtp_timeout_seconds=5,
    )


async def test_smtp_mailer_delivers_to_the_server(tmp_path: Path):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = smtp_settings(tmp_path, controller.port)
        mailer = create_mailer(settings)
        assert isinstance(mailer, SmtpMailer)
        await mailer.send(
            compose(settings, to="bob@example.com", subject="Hi", body="The link: x\n")
        )
    finally:
        controller.stop()
    [(sender, recipients, content)] = inbox.received
    assert sender == "no-reply@record.example"
    assert recipients == ["bob@example.com"]
    message = message_from_bytes(content, policy=default)
    assert message["Subject"] == "Hi"
    assert message["Message-ID"].endswith("@record.example>")
    assert "The link: x" in message.get_body().get_content()  # type: ignore[union-attr]
    assert eml_files(tmp_path) == []  # nothing written locally


async def test_an_unreachable_server_raises_so_the_job_retries(tmp_path: Path):
    settings = smtp_settings(tmp_path, free_port())  # nothing listens there
    with pytest.raises(aiosmtplib.SMTPException):
        await SmtpMailer(settings).send(
            compose(settings, to="bob@example.com", subject="Hi", body="x\n")
        )


def test_smtp_needs_a_host(tmp_path: Path):
    settings = smtp_settings(tmp_path, 587).model_copy(update={"smtp_host": None})
    with pytest.raises(ValueError, match="SMTP_HOST"):
        create_mailer(settings)
