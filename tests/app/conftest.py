"""API-level helpers: make orgs, users and keys through the API itself."""

from __future__ import annotations

import email
import email.policy
import itertools
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ai.local_models import LocalModels
from app.jobs.queue import MAIL_QUEUE
from app.kit.db import Database
from app.mail.sender import FileMailer, mail_dir
from tests.app.retrieval import corpus, models, seeder  # noqa: F401 - search and chat fixtures
from tests.conftest import ROLES, as_login
from worker.jobs import STATE, build_app
from worker.mail import MailDeps

PASSWORD = "plum-tide-orbit-velvet-42"
_n = itertools.count()


class Mailbox:
    """The local mail drop (MAIL_BACKEND=file) of a test's app: runs the queued mail jobs with
    the real worker task, then reads the .eml files they wrote."""

    def __init__(self, settings: Any, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db  # None: a pool of its own for each delivery

    @property
    def directory(self) -> Path:
        return mail_dir(self.settings)

    async def deliver(self) -> None:
        db = self.db or Database(self.settings)
        if self.db is None:
            await db.open()
        STATE.mail = MailDeps(self.settings, db, FileMailer(self.directory))
        try:
            # procrastinate's worker side, as the worker's login role (the API's may only defer).
            jobs = build_app(as_login(self.settings, ROLES.worker))
            async with jobs.open_async():
                await jobs.run_worker_async(
                    queues=[MAIL_QUEUE],
                    wait=False,
                    install_signal_handlers=False,
                    concurrency=1,
                    listen_notify=False,
                )
        finally:
            STATE.mail = None
            if self.db is None:
                await db.close()

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        found = []
        for path in sorted(self.directory.glob("*.eml")) if self.directory.exists() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            if to is None or message["To"] == to:
                found.append(message)
        return found

    async def token(self, to: str, path: str) -> str:
        """The token of the newest link ``PUBLIC_URL/<path>/<token>`` mailed to ``to``."""
        await self.deliver()
        for message in reversed(self.messages(to)):
            body = message.get_content()
            match = re.search(rf"/{path}/([A-Za-z0-9_-]+)", body)
            if match:
                return match.group(1)
        raise AssertionError(f"no /{path}/ link was mailed to {to}")

    async def verify(self, client: httpx.AsyncClient, email_address: str, session: str) -> None:
        """Verify ``email_address`` with its mailed link, signed in with ``session``."""
        token = await self.token(email_address, "verify")
        response = await client.post(
            "/api/auth/verify",
            json={"token": token},
            headers={"Authorization": f"Bearer {session}"},
        )
        assert response.status_code == 204, response.text


@dataclass
class Tenant:
    """An org made through the API: its owner's session and an owner API key."""

    client: httpx.AsyncClient
    org_id: str
    user_id: str
    email: str
    session: str
    owner_key: str
    keys: dict[str, str] = field(default_factory=dict)
    mailbox: Mailbox | None = None

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.owner_key}"}

    def session_auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.session}", "X-Record-Org": self.org_id}

    async def key(self, role: str) -> str:
        """An API key of this org with ``role`` (made once, by the owner)."""
        if role not in self.keys:
            response = await self.client.post(
                f"/api/orgs/{self.org_id}/api-keys",
                json={"name": f"{role} key", "role": role},
                headers=self.auth(),
            )
            assert response.status_code == 201, response.text
            self.keys[role] = response.json()["key"]
        return self.keys[role]

    async def member(self, role: str) -> tuple[str, str]:
        """A new user who is a member with ``role``: (user_id, session token), joined the way a
        person joins: signed up, verified, invited, and accepted with the mailed link."""
        assert self.mailbox is not None, "member() reads the mail: make the tenant with a mailbox"
        user = await signup(self.client, name=f"{role} member")
        await self.mailbox.verify(self.client, user["email"], user["session_token"])
        await self.join(user["email"], user["session_token"], role)
        return user["user"]["id"], user["session_token"]

    async def join(self, email_address: str, session: str, role: str) -> None:
        """Invite ``email_address`` with ``role`` and accept as the holder of ``session``."""
        assert self.mailbox is not None
        response = await self.client.post(
            f"/api/orgs/{self.org_id}/members",
            json={"email": email_address, "role": role},
            headers=self.auth(),
        )
        assert response.status_code == 201, response.text
        token = await self.mailbox.token(email_address, "invite")
        response = await self.client.post(
            "/api/invitations/accept",
            json={"token": token},
            headers={"Authorization": f"Bearer {session}"},
        )
        assert response.status_code == 200, response.text


async def signup(client: httpx.AsyncClient, name: str = "Ada", **extra: Any) -> dict[str, Any]:
    email = f"user{next(_n)}@example.com"
    response = await client.post(
        "/api/auth/signup", json={"email": email, "password": PASSWORD, "name": name, **extra}
    )
    assert response.status_code == 201, response.text
    return {**response.json(), "email": email}


async def make_tenant(
    client: httpx.AsyncClient, name: str = "Acme", mailbox: Mailbox | None = None
) -> Tenant:
    user = await signup(client, org_name=name)
    org_id = user["org"]["id"]
    headers = {"Authorization": f"Bearer {user['session_token']}", "X-Record-Org": org_id}
    response = await client.post(
        f"/api/orgs/{org_id}/api-keys",
        json={"name": "owner key", "role": "owner"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return Tenant(
        client=client,
        org_id=org_id,
        user_id=user["user"]["id"],
        email=user["email"],
        session=user["session_token"],
        owner_key=response.json()["key"],
        mailbox=mailbox,
    )


@pytest.fixture
def mailbox(app: Any) -> Mailbox:
    services = app.state.services
    return Mailbox(services.settings, services.db)


@pytest.fixture
async def org_a(client: httpx.AsyncClient, mailbox: Mailbox) -> Tenant:
    return await make_tenant(client, "Org A", mailbox)


@pytest.fixture
async def org_b(client: httpx.AsyncClient, mailbox: Mailbox) -> Tenant:
    return await make_tenant(client, "Org B", mailbox)


# The real models behind the real model server, loaded once per session (lazily: a test that
# only embeds never loads whisper).
@pytest.fixture(scope="session")
def local_models() -> LocalModels:
    return LocalModels()


@pytest.fixture(scope="session")
def model_app(local_models: LocalModels) -> object:
    from app.ai.server import create_model_app

    return create_model_app(local_models, preload=False)
