"""Outgoing mail: composed here, sent by a job through one of two senders.

``FileMailer`` writes each message as an ``.eml`` file under ``STATE_DIR/mail`` (the local
stack: a person or a test opens the link there); ``SmtpMailer`` sends it through an SMTP server
with aiosmtplib (in production Amazon SES's SMTP endpoint, STARTTLS on 587). Both raise on
failure so the job that sends is retried.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Protocol
from uuid import uuid4

import aiosmtplib
import anyio

from app.settings import Settings


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


def compose(settings: Settings, *, to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text message from MAIL_FROM. Plain text only: no markup to escape or render."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "record.localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(body)
    return message


class FileMailer:
    """Each message becomes ``<dir>/<UTC time>-<random>.eml``, readable by its owner only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _write(self, message: EmailMessage) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.directory / f"{stamp}-{uuid4().hex[:8]}.eml"
        partial = path.with_suffix(".part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(message.as_bytes())
        # A reader polling the folder never sees half a message.
        partial.rename(path)
        return path

    async def send(self, message: EmailMessage) -> None:
        await anyio.to_thread.run_sync(self._write, message)


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise ValueError("MAIL_BACKEND=smtp needs SMTP_HOST (and SMTP_USERNAME/SMTP_PASSWORD)")
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self.settings
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            start_tls=s.smtp_starttls,
            timeout=s.smtp_timeout_seconds,
        )


def mailed_link(settings: Settings, path: str, token: str) -> str:
    """``PUBLIC_URL/<path>/<token>``: the link a mail carries (verify, invite, reset-password)."""
    return f"{settings.public_url.rstrip('/')}/{path}/{token}"


def mail_dir(settings: Settings) -> Path:
    return settings.state_dir / "mail"


def create_mailer(settings: Settings) -> Mailer:
    if settings.mail_backend == "smtp":
        return SmtpMailer(settings)
    return FileMailer(mail_dir(settings))
