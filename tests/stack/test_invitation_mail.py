"""A new person invited by email joins through the links the running stack mails: signup, the
verification link and the invitation link, each read from the local mail drop (.record/mail)
that `record up`'s worker writes, over real HTTP."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage

import httpx
import pytest

from tests.stack.conftest import RunningStack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PASSWORD = "plum-tide-orbit-velvet-42"


def mailed_link(stack: RunningStack, to: str, path: str, timeout: float = 60.0) -> str:
    """The newest ``<PUBLIC_URL>/<path>/<token>`` link mailed to ``to``, once the worker sent it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for eml in sorted((stack.state / "mail").glob("*.eml"), reverse=True):
            message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            if message["To"] != to:
                continue
            match = re.search(rf"(http://\S+/{path}/([A-Za-z0-9_-]+))", message.get_content())
            if match:
                return match.group(1)
        time.sleep(0.25)
    raise AssertionError(f"no /{path}/ link reached {to} within {timeout}s")


def test_an_invited_person_joins_through_the_mailed_links(stack: RunningStack):
    env = stack.dev_env()
    owner = {"Authorization": f"Bearer {env['RECORD_API_KEY']}"}
    org_id = env["RECORD_ORG_ID"]
    newcomer = "newcomer@example.com"
    with httpx.Client(base_url=stack.api_url, timeout=10) as http:
        signed_up = http.post(
            "/api/auth/signup", json={"email": newcomer, "password": PASSWORD, "name": "New"}
        )
        assert signed_up.status_code == 201, signed_up.text
        session = {"Authorization": f"Bearer {signed_up.json()['session_token']}"}

        verify = mailed_link(stack, newcomer, "verify")
        assert verify.startswith(f"{stack.api_url}/verify/")
        token = verify.rsplit("/", 1)[1]
        verified = http.post("/api/auth/verify", json={"token": token}, headers=session)
        assert verified.status_code == 204, verified.text

        invited = http.post(
            f"/api/orgs/{org_id}/members",
            json={"email": newcomer, "role": "contributor"},
            headers=owner,
        )
        assert invited.status_code == 201, invited.text
        members = http.get(f"/api/orgs/{org_id}/members", headers=owner).json()["items"]
        assert newcomer not in {m["email"] for m in members}  # not before accepting

        invite = mailed_link(stack, newcomer, "invite")
        assert invite.startswith(f"{stack.api_url}/invite/ri_")
        accepted = http.post(
            "/api/invitations/accept", json={"token": invite.rsplit("/", 1)[1]}, headers=session
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["role"] == "contributor"
        members = http.get(f"/api/orgs/{org_id}/members", headers=owner).json()["items"]
        assert {m["email"]: m["role"] for m in members}[newcomer] == "contributor"
    # Mail files are the owner's alone: they hold live links.
    for eml in (stack.state / "mail").glob("*.eml"):
        assert eml.stat().st_mode & 0o077 == 0
