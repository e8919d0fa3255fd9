"""The tenant matrix: every operation of the OpenAPI document, called by every kind of caller
(a member of each of the four roles, an owner and a reader API key, nobody), on objects of the
caller's own org and of another org, answers what one table (RULES) says it should.

RULES has one row per operation id, and the test fails when the document's operations and the
table's keys differ: a new route cannot ship without someone deciding who may call it.

How the app answers, as read from app/auth/deps.py and the services (not guessed):

- signed out: 401 on every operation that is not public;
- a role below the operation's minimum: 403, checked before any object is looked up, so the
  same 403 comes back for another org's object (the caller learns nothing about it);
- another org's object, with a role that may act: 404 (row-level security hides it);
- an org named in the request that the caller is not in (the ``X-Record-Org`` header of a
  session, or any org for an API key, which belongs to one): 404 at authentication.

Allowed calls may still be refused for what they carry (a 4xx validation or conflict answer);
only 401, 403 and 404 mean the tenant check got it wrong, and no answer may be a 5xx.

One app and one database for the whole matrix. Calls that are refused change nothing, so they
all run first; the allowed calls that use something up (delete, revoke, log out) then each get
a fresh object or a fresh credential of their own.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
import pytest

from app.auth.rbac import Role, at_most
from app.auth.tokens import SESSION_PREFIX, new_token, token_digest
from app.kit.security.passwords import hash_password
from app.main import create_app
from app.recordings.direct import PendingUpload, pending_key
from tests.app.conftest import PASSWORD, Tenant, make_tenant, signup
from tests.conftest import ROLES, as_login
from tests.worker.conftest import FakeOpenAI

PUBLIC = "public"  # anyone, signed in or not
SIGNED_IN = "signed-in"  # any caller with a credential, whatever its role, even an API key
PERSON = "person"  # a signed-in person: an API key is refused (403)

Access = Role | str


@dataclass
class Objects:
    """What one org holds for the matrix to aim at: made through the API or seeded as the
    database owner (as test_rls.py does), never through the route under test."""

    org_id: str
    owner_id: str
    recording_id: str
    share_id: str
    invitation_id: str
    member_id: str  # a reader, the target of role changes and removals
    key_id: str
    job_id: int
    upload_id: str
    conversations: dict[str, str] = field(default_factory=dict)  # user id -> conversation


Body = Callable[[Objects], dict[str, Any]]


@dataclass(frozen=True)
class Rule:
    access: Access
    body: Body | None = None
    # The body names an object of the org (so "another org" means that org's object, not the
    # header naming that org).
    body_refs: bool = False
    # What an allowed call uses up, so that each gets a fresh one: "object" (the one in its
    # path), "session" (its caller's credential) or "org" (the org itself).
    consumes: str | None = None
    multipart: bool = False
    # The route lets this lower role through, and the service then refuses what the caller did
    # not create: so that role gets 403 on its own org's (owner-made) object, but 404 on
    # another org's, which the service does not find.
    gate: Role | None = None
    # What an allowed caller gets when the matrix has no real object to send (instead of
    # "anything but 401, 403 and 404").
    allowed_status: int | None = None


def _share_body(o: Objects) -> dict[str, Any]:
    return {"resource_type": "recording", "resource_id": o.recording_id}


# The roles table of DESIGN.md, per operation. A role holding a permission only on its own
# resources ("own" in the table) is refused here, because the matrix's objects belong to the
# org's owner: editing, deleting or sharing another member's recording needs an admin.
RULES: dict[str, Rule] = {
    "livez_livez_get": Rule(PUBLIC),
    "readyz_readyz_get": Rule(PUBLIC),
    "public_health_api_health_get": Rule(PUBLIC),
    "signup_api_auth_signup_post": Rule(
        PUBLIC, lambda o: {"email": "matrix@example.com", "password": PASSWORD, "name": "M"}
    ),
    "login_api_auth_login_post": Rule(
        PUBLIC, lambda o: {"email": "matrix-login@example.com", "password": PASSWORD}
    ),
    "request_password_reset_api_auth_password_reset_post": Rule(
        PUBLIC, lambda o: {"email": "nobody@example.com"}
    ),
    "confirm_password_reset_api_auth_password_reset_confirm_post": Rule(
        PUBLIC, lambda o: {"token": "x" * 40, "password": PASSWORD}
    ),
    "open_share_s__share_id__get": Rule(PUBLIC),
    "open_shared_media_s__share_id__media_get": Rule(PUBLIC),
    "logout_api_auth_logout_post": Rule(SIGNED_IN, consumes="session"),
    "logout_all_api_auth_logout_all_post": Rule(PERSON, consumes="session"),
    # A new password too weak to take: the call goes as far as it can without signing the
    # caller's other sessions out.
    "change_password_api_auth_password_post": Rule(
        PERSON, lambda o: {"old": PASSWORD, "new": "weak"}
    ),
    "verify_email_api_auth_verify_post": Rule(PERSON, lambda o: {"token": "x" * 40}),
    "resend_verification_api_auth_verify_resend_post": Rule(PERSON),
    "me_api_me_get": Rule(SIGNED_IN),
    "create_org_api_orgs_post": Rule(PERSON, lambda o: {"name": "Spin-off"}),
    # The token is a secret mailed to one address, not an object of an org: a caller allowed
    # to accept gets 404 for a token nobody issued (accepting has tests of its own).
    "accept_invitation_api_invitations_accept_post": Rule(
        PERSON, lambda o: {"token": "x" * 40}, allowed_status=404
    ),
    "get_org_api_orgs__org_id__get": Rule(Role.reader),
    "update_org_api_orgs__org_id__patch": Rule(Role.admin, lambda o: {"name": "Renamed"}),
    "delete_org_api_orgs__org_id__delete": Rule(Role.owner, consumes="org"),
    "list_members_api_orgs__org_id__members_get": Rule(Role.reader),
    "invite_member_api_orgs__org_id__members_post": Rule(
        Role.admin, lambda o: {"email": f"inv-{uuid.uuid4().hex[:8]}@example.com", "role": "reader"}
    ),
    "list_invitations_api_orgs__org_id__invitations_get": Rule(Role.admin),
    "revoke_invitation_api_orgs__org_id__invitations__invitation_id__delete": Rule(
        Role.admin, consumes="object"
    ),
    "get_oidc_binding_api_orgs__org_id__oidc_binding_get": Rule(Role.owner),
    "put_oidc_binding_api_orgs__org_id__oidc_binding_put": Rule(
        Role.owner, lambda o: {"issuer": "https://idp.example.com", "claim_value": o.org_id}
    ),
    "delete_oidc_binding_api_orgs__org_id__oidc_binding_delete": Rule(
        Role.owner, consumes="object"
    ),
    "change_member_role_api_orgs__org_id__members__user_id__patch": Rule(
        Role.admin, lambda o: {"role": "contributor"}, consumes="object"
    ),
    # Any member may remove themselves (leave); removing another member needs an admin.
    "remove_member_api_orgs__org_id__members__user_id__delete": Rule(
        Role.admin, consumes="object", gate=Role.reader
    ),
    "list_api_keys_api_orgs__org_id__api_keys_get": Rule(Role.admin),
    "create_api_key_api_orgs__org_id__api_keys_post": Rule(
        Role.admin, lambda o: {"name": "matrix", "role": "reader"}
    ),
    "revoke_api_key_api_orgs__org_id__api_keys__key_id__delete": Rule(
        Role.admin, consumes="object"
    ),
    "upload_recording_api_recordings_post": Rule(Role.contributor, multipart=True),
    "list_recordings_api_recordings_get": Rule(Role.reader),
    "get_recording_api_recordings__recording_id__get": Rule(Role.reader),
    "update_recording_api_recordings__recording_id__patch": Rule(
        Role.admin, lambda o: {"title": "Renamed"}, gate=Role.contributor
    ),
    "delete_recording_api_recordings__recording_id__delete": Rule(
        Role.admin, consumes="object", gate=Role.contributor
    ),
    "get_media_api_recordings__recording_id__media_get": Rule(Role.reader),
    "start_direct_upload_api_recordings_uploads_post": Rule(
        Role.contributor, lambda o: {"filename": "talk.mp3", "size": 1000}
    ),
    # The pending upload was started by the owner: a contributor completes only its own.
    "complete_direct_upload_api_recordings_uploads__upload_id__complete_post": Rule(
        Role.admin, consumes="object", gate=Role.contributor
    ),
    "get_transcript_api_recordings__recording_id__transcript_get": Rule(Role.reader),
    "get_document_api_recordings__recording_id__document_get": Rule(Role.reader),
    "get_job_api_jobs__job_id__get": Rule(Role.reader),
    "search_api_search_post": Rule(Role.reader, lambda o: {"query": "budget", "mode": "keyword"}),
    "chat_stream_api_chat_stream_post": Rule(Role.reader, lambda o: {"message": "What budget?"}),
    # Conversations are each member's own: the matrix aims at the caller's own conversation.
    "list_conversations_api_conversations_get": Rule(Role.reader),
    "get_conversation_api_conversations__conversation_id__get": Rule(Role.reader),
    "delete_conversation_api_conversations__conversation_id__delete": Rule(
        Role.reader, consumes="object"
    ),
    "list_messages_api_conversations__conversation_id__messages_get": Rule(Role.reader),
    "create_share_api_share_post": Rule(
        Role.admin, _share_body, body_refs=True, gate=Role.contributor
    ),
    "list_shares_api_share_get": Rule(Role.contributor),
    "revoke_share_api_share__share_id__delete": Rule(
        Role.admin, consumes="object", gate=Role.contributor
    ),
}


@dataclass(frozen=True)
class Caller:
    name: str
    kind: str  # "session", "key" or "none"
    role: Role | None = None
    token: str | None = None
    user_id: str | None = None
    email: str | None = None
    key_id: str | None = None
    org_id: str | None = None


ALLOWED = 0  # any answer but 401, 403, 404 or a 5xx


def expected(rule: Rule, path: str, caller: Caller, other_org: bool) -> int:
    if rule.access == PUBLIC:
        return ALLOWED
    if caller.kind == "none":
        return 401
    named = not ("{" in path or rule.body_refs) or ("{org_id}" in path and caller.kind == "key")
    if other_org and named:
        # The request names an org the caller is not in (nothing else of it to aim at), or
        # names one in the path to a key, whose org is fixed: refused at authentication.
        return 404
    if rule.access == PERSON and caller.kind == "key":
        return 403
    assert caller.role is not None
    needed = rule.gate if other_org and rule.gate else rule.access
    if isinstance(needed, Role) and not at_most(needed, caller.role):
        return 403
    return 404 if other_org else ALLOWED


@dataclass
class World:
    client: httpx.AsyncClient
    database_url: str
    redis: Any
    key_prefix: str
    media_root: Path
    a: Tenant
    b: Tenant
    objects_a: Objects = field(init=False)
    objects_b: Objects = field(init=False)


def _sql(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    # As the database owner (RLS does not apply), like test_rls.py's seeding.
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None


def _seed_recording(url: str, org_id: str, user_id: str, media_root: Path) -> str:
    recording = str(uuid.uuid4())
    media_key = f"matrix/{recording}.mp3"
    (media_root / media_key).parent.mkdir(parents=True, exist_ok=True)
    (media_root / media_key).write_bytes(b"ID3 not really audio")
    job_id = _sql(
        url,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
        "VALUES ('matrix', 'matrix', '{}') RETURNING id",
    )
    _sql(
        url,
        "INSERT INTO recordings (id, org_id, created_by, title, status, job_id, media_key, "
        "content_type) VALUES (%s, %s, %s, 'Budget review', 'ready', %s, %s, 'audio/mpeg')",
        (recording, org_id, user_id, job_id, media_key),
    )
    return recording


def _seed_conversation(url: str, org_id: str, user_id: str | None, key_id: str | None) -> str:
    conversation = str(uuid.uuid4())
    _sql(
        url,
        "INSERT INTO conversations (id, org_id, user_id, key_id, title) "
        "VALUES (%s, %s, %s, %s, 'Budget')",
        (conversation, org_id, user_id, key_id),
    )
    return conversation


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)  # once: argon2 costs ~0.5 s a hash on a busy machine


def _session(url: str, user_id: str) -> str:
    token = new_token(SESSION_PREFIX)
    _sql(
        url,
        "INSERT INTO sessions (id, user_id, token_hash, expires_at) "
        "VALUES (gen_random_uuid(), %s, %s, now() + interval '1 hour')",
        (user_id, token_digest(token)),
    )
    return token


async def _member(client: httpx.AsyncClient, url: str, org_id: str, role: Role) -> Caller:
    """A signed-in member of the org with ``role``, seeded (signing up and joining through an
    invitation have tests of their own, and each signup hashes a password)."""
    user_id, email = str(uuid.uuid4()), f"{uuid.uuid4().hex[:12]}@example.com"
    _sql(
        url,
        "INSERT INTO users (id, email, name, password_hash, email_verified_at) "
        "VALUES (%s, %s, %s, %s, now())",
        (user_id, email, f"{role} member", _password_hash()),
    )
    _sql(
        url,
        "INSERT INTO memberships (org_id, user_id, role) VALUES (%s, %s, %s)",
        (org_id, user_id, role.value),
    )
    return Caller(f"{role} session", "session", role, _session(url, user_id), user_id, email)


async def _post(client: httpx.AsyncClient, path: str, body: Any, tenant: Tenant) -> Any:
    response = await client.post(path, json=body, headers=tenant.auth())
    assert response.status_code == 201, response.text
    return response.json()


async def _invitation(w: World, tenant: Tenant) -> str:
    body = {"email": f"inv-{uuid.uuid4().hex[:10]}@example.com", "role": "reader"}
    return str((await _post(w.client, f"/api/orgs/{tenant.org_id}/members", body, tenant))["id"])


async def _new_key(w: World, role: Role) -> dict[str, Any]:
    body = {"name": f"{role} key", "role": role.value}
    return dict(await _post(w.client, f"/api/orgs/{w.a.org_id}/api-keys", body, w.a))


async def _key(w: World, tenant: Tenant) -> str:
    body = {"name": "target", "role": "reader"}
    return str((await _post(w.client, f"/api/orgs/{tenant.org_id}/api-keys", body, tenant))["id"])


async def _share(w: World, tenant: Tenant, recording_id: str) -> str:
    body = {"resource_type": "recording", "resource_id": recording_id}
    return str((await _post(w.client, "/api/share", body, tenant))["share_id"])


async def _upload(w: World, org_id: str, user_id: str) -> str:
    upload_id = uuid.uuid4()
    pending = PendingUpload(
        org_id=uuid.UUID(org_id),
        user_id=uuid.UUID(user_id),
        recording_id=uuid.uuid4(),
        key=f"uploads/{upload_id}.mp3",
        filename="talk.mp3",
        title="Talk",
        size=1000,
        extension="mp3",
    )
    await w.redis.set(pending_key(upload_id, w.key_prefix), pending.dumps(), ex=3600)
    return str(upload_id)


async def _objects(w: World, tenant: Tenant) -> Objects:
    url = w.database_url
    recording = _seed_recording(url, tenant.org_id, tenant.user_id, w.media_root)
    _sql(
        url,
        "INSERT INTO transcripts (id, org_id, recording_id, language, text) "
        "VALUES (gen_random_uuid(), %s, %s, 'en', 'The budget is approved.')",
        (tenant.org_id, recording),
    )
    _sql(
        url,
        "INSERT INTO documents (id, org_id, recording_id, title, summary, model) "
        "VALUES (gen_random_uuid(), %s, %s, 'Budget', 'Approved.', 'test')",
        (tenant.org_id, recording),
    )
    member = await _member(w.client, url, tenant.org_id, Role.reader)
    assert member.user_id is not None
    response = await w.client.put(
        f"/api/orgs/{tenant.org_id}/oidc-binding",
        json={"issuer": "https://idp.example.com", "claim_value": tenant.org_id},
        headers=tenant.auth(),
    )
    assert response.status_code == 200, response.text
    return Objects(
        org_id=tenant.org_id,
        owner_id=tenant.user_id,
        recording_id=recording,
        share_id=await _share(w, tenant, recording),
        invitation_id=await _invitation(w, tenant),
        member_id=member.user_id,
        key_id=await _key(w, tenant),
        job_id=_sql(url, "SELECT job_id FROM recordings WHERE id = %s", (recording,)),
        upload_id=await _upload(w, tenant.org_id, tenant.user_id),
        conversations={
            tenant.user_id: _seed_conversation(url, tenant.org_id, tenant.user_id, None)
        },
    )


def _conversation_owner(caller: Caller, o: Objects) -> str:
    """Whose conversation the caller aims at: its own (a key's are the key's, not its
    maker's) in its own org; in another org, that org's owner's."""
    if o.org_id != caller.org_id:
        return o.owner_id
    return caller.key_id or caller.user_id or o.owner_id


def _params(o: Objects, caller: Caller) -> dict[str, Any]:
    return {
        "org_id": o.org_id,
        "recording_id": o.recording_id,
        "share_id": o.share_id,
        "invitation_id": o.invitation_id,
        "user_id": o.member_id,
        "key_id": o.key_id,
        "job_id": o.job_id,
        "upload_id": o.upload_id,
        "conversation_id": o.conversations.get(_conversation_owner(caller, o), str(uuid.uuid4())),
    }


@dataclass(frozen=True)
class Cell:
    operation_id: str
    method: str
    path: str
    caller: Caller
    other_org: bool

    @property
    def rule(self) -> Rule:
        return RULES[self.operation_id]

    @property
    def expect(self) -> int:
        return expected(self.rule, self.path, self.caller, self.other_org)

    def label(self) -> str:
        org = "other org" if self.other_org else "own org"
        return f"{self.method} {self.path} as {self.caller.name}, {org}"


async def _fresh_credential(w: World, caller: Caller) -> Caller:
    if caller.kind == "session":
        # Seeded rather than logged in: a login verifies an argon2 hash.
        assert caller.user_id is not None
        return replace(caller, token=_session(w.database_url, caller.user_id))
    assert caller.role is not None
    key = await _new_key(w, caller.role)
    return replace(caller, token=key["key"], key_id=str(key["id"]))


async def _fresh(w: World, cell: Cell, objects: Objects) -> tuple[Caller, Objects]:
    """A fresh credential, or fresh objects, for an allowed call that uses them up."""
    caller, kind, a = cell.caller, cell.rule.consumes, w.a
    if kind == "org":
        # Deleting the org itself: the owner of a throwaway org of its own does it.
        tenant = await make_tenant(w.client, "Throwaway")
        token = tenant.session if caller.kind == "session" else tenant.owner_key
        caller = replace(caller, token=token, user_id=tenant.user_id)
        return caller, replace(objects, org_id=tenant.org_id)
    if kind == "session":
        return await _fresh_credential(w, caller), objects
    fresh = replace(objects, conversations=dict(objects.conversations))
    url, path = w.database_url, cell.path
    if "{recording_id}" in path or "{share_id}" in path:
        fresh.recording_id = _seed_recording(url, a.org_id, a.user_id, w.media_root)
    if "{share_id}" in path:
        fresh.share_id = await _share(w, a, fresh.recording_id)
    if "{invitation_id}" in path:
        fresh.invitation_id = await _invitation(w, a)
    if "{user_id}" in path:
        member = await _member(w.client, url, a.org_id, Role.reader)
        assert member.user_id is not None
        fresh.member_id = member.user_id
    if "{key_id}" in path:
        fresh.key_id = str((await _new_key(w, Role.reader))["id"])
    if "{upload_id}" in path:
        fresh.upload_id = await _upload(w, a.org_id, a.user_id)
    if "{conversation_id}" in path:
        owner = _conversation_owner(caller, objects)
        fresh.conversations[owner] = _seed_conversation(
            url, a.org_id, caller.user_id, caller.key_id
        )
    if "oidc_binding" in cell.operation_id:
        response = await w.client.put(
            f"/api/orgs/{a.org_id}/oidc-binding",
            json={"issuer": "https://idp.example.com", "claim_value": a.org_id},
            headers=a.auth(),
        )
        assert response.status_code == 200, response.text
    return caller, fresh


async def _call(w: World, cell: Cell, caller: Caller, objects: Objects) -> httpx.Response:
    params = _params(objects, caller)
    path = cell.path.format(**{k: v for k, v in params.items() if "{" + k + "}" in cell.path})
    headers: dict[str, str] = {}
    if caller.token:
        headers["Authorization"] = f"Bearer {caller.token}"
    refs = "{" in cell.path or cell.rule.body_refs
    if cell.other_org and not refs:
        # Nothing of the other org to aim at: the request names that org instead.
        headers["X-Record-Org"] = objects.org_id
    elif caller.kind == "session":
        # A member names the org it acts in (its own, also when aiming at another's object).
        headers["X-Record-Org"] = w.a.org_id if cell.other_org else objects.org_id
    kwargs: dict[str, Any] = {"headers": headers}
    if cell.rule.body is not None:
        kwargs["json"] = cell.rule.body(objects)
    if cell.rule.multipart:
        kwargs["files"] = {"file": ("notes.txt", b"not a recording", "text/plain")}
        kwargs["data"] = {"title": "Notes"}
    return await w.client.request(cell.method, path, **kwargs)


def _verdict(cell: Cell, response: httpx.Response) -> str | None:
    status, want = response.status_code, cell.expect
    if want == ALLOWED and cell.rule.allowed_status:
        want = cell.rule.allowed_status
    if want == ALLOWED:
        ok, wanted = status < 500 and status not in (401, 403, 404), "allowed"
    else:
        ok, wanted = status == want, str(want)
    return None if ok else f"{cell.label()}: expected {wanted}, got {status} {response.text[:300]}"


@pytest.fixture
async def matrix_client(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    from asgi_lifespan import LifespanManager

    # Rate limits would answer 429 long before the matrix is through (they have their own
    # tests); the model server is outside, a fake answers for it.
    configured = settings.model_copy(
        update={"ratelimit_enabled": False, "openai_base_url": "http://fake-openai.test/v1"}
    )
    application = create_app(
        as_login(configured, ROLES.api), model_transport=httpx2.MockTransport(FakeOpenAI())
    )
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = application  # type: ignore[attr-defined]
            yield http


async def _world(client: httpx.AsyncClient, settings: Any, redis: Any) -> World:
    a = await make_tenant(client, "Org A")
    b = await make_tenant(client, "Org B")
    await signup(client, name="Login target", email="matrix-login@example.com")
    media_root = settings.state_dir / "objects"  # the file store's root (kit/storage.py)
    w = World(client, settings.database_url, redis, settings.redis_key_prefix, media_root, a, b)
    w.objects_a = await _objects(w, a)
    w.objects_b = await _objects(w, b)
    return w


async def _callers(w: World) -> list[Caller]:
    a, url = w.a, w.database_url
    owner = Caller("owner session", "session", Role.owner, a.session, a.user_id, a.email)
    members = [await _member(w.client, url, a.org_id, r) for r in Role if r != Role.owner]
    keys = []
    for role in (Role.owner, Role.reader):
        key = await _new_key(w, role)
        keys.append(Caller(f"{role} API key", "key", role, key["key"], a.user_id, None, key["id"]))
    callers = [replace(c, org_id=a.org_id) for c in (owner, *members, *keys)]
    for caller in callers:  # each one's own conversation
        owner_of = _conversation_owner(caller, w.objects_a)
        w.objects_a.conversations[owner_of] = _seed_conversation(
            url, a.org_id, caller.user_id, caller.key_id
        )
    return [*callers, Caller("signed out", "none")]


def _cells(document: dict[str, Any], callers: list[Caller]) -> list[Cell]:
    return [
        Cell(op["operationId"], method.upper(), path, caller, other_org)
        for path, operations in document["paths"].items()
        for method, op in operations.items()
        for caller in callers
        # A public operation has no "own org": once per caller, on the first org's objects.
        for other_org in ((False,) if RULES[op["operationId"]].access == PUBLIC else (False, True))
    ]


def _order(cell: Cell) -> int:
    """Refusals first, as they change nothing; then the allowed calls; those that use up an
    object, then those that end sessions (logging out everywhere ends the caller's others)."""
    if cell.expect != ALLOWED:
        return 0
    return {None: 1, "object": 2, "org": 2, "session": 3}[cell.rule.consumes]


def _operation_ids(document: dict[str, Any]) -> set[str]:
    return {op["operationId"] for ops in document["paths"].values() for op in ops.values()}


async def test_every_operation_answers_every_caller_as_the_roles_table_says(
    matrix_client: httpx.AsyncClient, settings: Any
) -> None:
    document = matrix_client.app.openapi()  # type: ignore[attr-defined]
    assert set(RULES) == _operation_ids(document), (
        "every operation needs a row in RULES (and every row an operation): "
        f"missing {sorted(_operation_ids(document) - set(RULES))}, "
        f"stale {sorted(set(RULES) - _operation_ids(document))}"
    )
    services = matrix_client.app.state.services  # type: ignore[attr-defined]
    w = await _world(matrix_client, settings, services.redis)

    cells = _cells(document, await _callers(w))
    failures: list[str] = []
    # Refusals first: they change nothing. Then the allowed calls, those that use something up
    # on fresh objects.
    for cell in sorted(cells, key=_order):
        caller, objects = cell.caller, w.objects_b if cell.other_org else w.objects_a
        if cell.expect == ALLOWED and cell.rule.consumes:
            caller, objects = await _fresh(w, cell, objects)
        failure = _verdict(cell, await _call(w, cell, caller, objects))
        if failure:
            failures.append(failure)

    assert not failures, f"{len(failures)} of {len(cells)} cells:\n" + "\n".join(failures)
