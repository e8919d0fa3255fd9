"""POST /api/chat/stream and the conversations it keeps: two orgs, two people, bad input, a
model that fails mid-way. The answers come from the real extractive model behind the real model
server, grounded in passages the real search retrieved."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.app.conftest import Tenant
from tests.app.retrieval import PLANNING, CountingTransport


async def chat(client, tenant: Tenant, auth: dict[str, str] | None = None, **body) -> Any:
    """(status, events) where events are (name, data) in order; or (status, problem)."""
    headers = auth or tenant.auth()
    async with client.stream("POST", "/api/chat/stream", json=body, headers=headers) as response:
        raw = (await response.aread()).decode()
        if response.status_code != 200:
            return response.status_code, json.loads(raw)
        assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in raw.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return 200, events


async def test_an_answer_streams_cites_the_moment_and_is_kept(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    planning_id, planning_chunks = corpus["planning"]
    status, events = await chat(client, org_a, message="Who will prepare the budget review?")
    assert status == 200, events
    names = [name for name, _ in events]
    assert names[0] == "conversation"
    assert names[-2:] == ["citations", "done"]
    assert set(names[1:-2]) == {"token"}
    answer = "".join(data["text"] for name, data in events if name == "token")
    assert PLANNING[0] in answer
    citations = events[-2][1]["citations"]
    first = citations[0]
    assert f"[{first['number']}]" in answer
    assert first == {
        "number": first["number"],
        "recording_id": planning_id,
        "recording_title": "Planning sync",
        "chunk_id": planning_chunks[0],
        "start": 0.0,
        "end": 5.0,
        "text": PLANNING[0],
    }
    assert corpus["rival"][0] not in {c["recording_id"] for c in citations}
    conversation_id = events[0][1]["conversation_id"]

    # Kept: the conversation, titled by its first question, with both messages.
    listed = (await client.get("/api/conversations", headers=org_a.auth())).json()
    assert [(c["id"], c["title"]) for c in listed["items"]] == [
        (conversation_id, "Who will prepare the budget review?")
    ]
    messages = (
        await client.get(f"/api/conversations/{conversation_id}/messages", headers=org_a.auth())
    ).json()["items"]
    assert [(m["role"], m["id"]) for m in messages] == [
        ("user", events[0][1]["message_id"]),
        ("assistant", events[-1][1]["message_id"]),
    ]
    assert messages[1]["content"] == answer
    assert messages[1]["citations"] == citations
    assert messages[1]["model"] == "record-extractive-1"

    # A follow-up continues it, with the earlier turn sent to the model as history.
    chats_before = models.calls["/v1/chat/completions"]
    status, events = await chat(
        client, org_a, message="When is the offsite?", conversation_id=conversation_id
    )
    assert status == 200
    assert events[0][1]["conversation_id"] == conversation_id
    assert models.calls["/v1/chat/completions"] == chats_before + 1
    sent = models.bodies["/v1/chat/completions"][-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "Who will prepare the budget review?"),
        ("assistant", answer),
        ("user", "When is the offsite?"),
    ]
    assert sent[0]["role"] == "system"
    assert "[1] " in sent[0]["content"]
    assert "June" in "".join(d["text"] for n, d in events if n == "token")
    messages = (
        await client.get(f"/api/conversations/{conversation_id}/messages", headers=org_a.auth())
    ).json()["items"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    page = await client.get(
        f"/api/conversations/{conversation_id}/messages?limit=3", headers=org_a.auth()
    )
    rest = await client.get(
        f"/api/conversations/{conversation_id}/messages?cursor={page.json()['next_cursor']}",
        headers=org_a.auth(),
    )
    assert [m["id"] for m in page.json()["items"] + rest.json()["items"]] == [
        m["id"] for m in messages
    ]


async def test_a_conversation_about_some_recordings_stays_about_them(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    offsite_id, _ = corpus["offsite"]
    status, events = await chat(
        client, org_a, message="Who prepares the budget review?", recording_ids=[offsite_id]
    )
    assert status == 200
    cited = {c["recording_id"] for c in events[-2][1]["citations"]}
    assert cited <= {offsite_id}
    conversation_id = events[0][1]["conversation_id"]
    got = (await client.get(f"/api/conversations/{conversation_id}", headers=org_a.auth())).json()
    assert got["recording_ids"] == [offsite_id]
    # The follow-up, naming none, is still about the offsite only.
    status, events = await chat(
        client, org_a, message="Maria budget review Friday", conversation_id=conversation_id
    )
    assert {c["recording_id"] for c in events[-2][1]["citations"]} <= {offsite_id}
    # Once its recordings are deleted, there is nothing to answer from (not the whole org).
    await client.delete(f"/api/recordings/{offsite_id}", headers=org_a.auth())
    status, events = await chat(
        client, org_a, message="Who prepares the budget review?", conversation_id=conversation_id
    )
    assert status == 200
    assert events[-2][1]["citations"] == []


async def test_conversations_are_their_owners_alone(
    client, models: CountingTransport, corpus, org_a: Tenant, org_b: Tenant
):
    _, events = await chat(client, org_a, message="Who will prepare the budget review?")
    conversation_id = events[0][1]["conversation_id"]
    _admin, admin_session = await org_a.member("admin")
    colleague = org_a.session_auth(admin_session)
    for path in (
        f"/api/conversations/{conversation_id}",
        f"/api/conversations/{conversation_id}/messages",
    ):
        assert (await client.get(path, headers=colleague)).status_code == 404
        assert (await client.get(path, headers=org_b.auth())).status_code == 404
    assert (await client.get("/api/conversations", headers=colleague)).json()["items"] == []
    assert (await client.get("/api/conversations", headers=org_b.auth())).json()["items"] == []
    for other in (colleague, org_b.auth()):
        status, problem = await chat(
            client, org_a, other, message="and?", conversation_id=conversation_id
        )
        assert status == 404, problem
        response = await client.delete(f"/api/conversations/{conversation_id}", headers=other)
        assert response.status_code == 404
    # Every role may chat; a reader's conversation is the reader's.
    _reader, reader_session = await org_a.member("reader")
    status, events = await chat(
        client, org_a, org_a.session_auth(reader_session), message="When is the offsite?"
    )
    assert status == 200
    assert events[-1][0] == "done"


async def test_delete_takes_the_messages_and_the_shares(
    client, models: CountingTransport, corpus, org_a: Tenant, settings
):
    import psycopg

    _, events = await chat(client, org_a, message="Who will prepare the budget review?")
    conversation_id = events[0][1]["conversation_id"]
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO shares (id, org_id, resource_type, resource_id) "
            "VALUES (%s, %s, 'conversation', %s)",
            ("s" * 20, org_a.org_id, conversation_id),
        )
    response = await client.delete(f"/api/conversations/{conversation_id}", headers=org_a.auth())
    assert response.status_code == 204
    with psycopg.connect(settings.database_url) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM messages WHERE conversation_id = %s), "
            "(SELECT count(*) FROM shares WHERE resource_id = %s)",
            (conversation_id, conversation_id),
        ).fetchone()
    assert left == (0, 0)
    response = await client.delete(f"/api/conversations/{conversation_id}", headers=org_a.auth())
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"message": ""},
        {"message": "   "},
        {"message": "x" * 4001},
        {"message": "hi", "conversation_id": "nope"},
        {"message": "hi", "recording_ids": []},
        {"message": "hi", "recording_ids": [str(uuid.uuid4()) for _ in range(101)]},
        {"message": "hi", "stream": False},
        {"message": "budget\u0000review"},
    ],
)
async def test_bad_questions_are_problems_and_keep_nothing(
    client, models: CountingTransport, org_a: Tenant, body
):
    status, problem = await chat(client, org_a, **body)
    assert status == 400, problem
    assert problem["code"] == "validation_error"
    assert (await client.get("/api/conversations", headers=org_a.auth())).json()["items"] == []
    assert models.calls == {}


async def test_unknown_recordings_and_conversations_are_404_and_keep_nothing(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    for body in (
        {"message": "hi", "recording_ids": [corpus["rival"][0]]},  # org B's
        {"message": "hi", "conversation_id": str(uuid.uuid4())},
    ):
        status, problem = await chat(client, org_a, **body)
        assert status == 404, problem
    assert (await client.get("/api/conversations", headers=org_a.auth())).json()["items"] == []


async def test_a_model_that_fails_ends_the_stream_with_an_error_event(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    models.down = True  # retrieval answers by words; the answer cannot be had
    status, events = await chat(client, org_a, message="Who will prepare the budget review?")
    assert status == 200
    assert [name for name, _ in events] == ["conversation", "error"]
    assert events[1][1]["status"] == 502
    assert events[1][1]["detail"] == "The model could not answer right now; ask again."
    conversation_id = events[0][1]["conversation_id"]
    messages = (
        await client.get(f"/api/conversations/{conversation_id}/messages", headers=org_a.auth())
    ).json()["items"]
    assert [m["role"] for m in messages] == ["user"]  # the question is kept, to ask again


async def test_a_key_whose_maker_is_gone_cannot_hold_conversations(
    client, models: CountingTransport, org_a: Tenant, settings
):
    import psycopg

    key = await org_a.key("admin")
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE api_keys SET created_by = NULL WHERE org_id = %s AND role = 'admin'",
            (org_a.org_id,),
        )
    # A key acts with its maker's role at most: without a maker it authenticates nobody.
    status, problem = await chat(client, org_a, org_a.auth(key), message="hello")
    assert status == 401, problem
    response = await client.get("/api/conversations", headers=org_a.auth(key))
    assert response.status_code == 401
    assert models.calls == {}


async def test_a_key_holds_its_own_conversations_not_its_makers(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    """A key acts for the member who made it, but their conversations are private: a reader
    key handed to a bot must not read them, and their session must not read the bot's."""
    _, events = await chat(client, org_a, org_a.session_auth(org_a.session), message="Budget?")
    persons = events[0][1]["conversation_id"]
    bot = org_a.auth(await org_a.key("reader"))
    _, events = await chat(client, org_a, bot, message="When is the offsite?")
    bots = events[0][1]["conversation_id"]
    for headers, own, other in (
        (org_a.session_auth(org_a.session), persons, bots),
        (bot, bots, persons),
    ):
        listed = (await client.get("/api/conversations", headers=headers)).json()["items"]
        assert [c["id"] for c in listed] == [own]
        for path in (f"/api/conversations/{other}", f"/api/conversations/{other}/messages"):
            assert (await client.get(path, headers=headers)).status_code == 404
        response = await client.delete(f"/api/conversations/{other}", headers=headers)
        assert response.status_code == 404
        body = {"resource_type": "conversation", "resource_id": other}
        response = await client.post("/api/share", json=body, headers=headers)
        assert response.status_code in {403, 404}  # a reader may not share at all
    # Another key of the same maker is another holder.
    other_key = org_a.auth(await org_a.key("admin"))
    assert (await client.get("/api/conversations", headers=other_key)).json()["items"] == []


async def test_a_conversation_deleted_while_it_is_answered_ends_with_an_error_event(
    client, models: CountingTransport, corpus, org_a: Tenant, settings
):
    import psycopg

    def delete_it() -> None:
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("DELETE FROM conversations")

    models.before["/v1/chat/completions"] = delete_it
    status, events = await chat(client, org_a, message="Who will prepare the budget review?")
    assert status == 200
    names = [name for name, _ in events]
    assert names[0] == "conversation"
    assert names[-1] == "error", names
    assert events[-1][1]["status"] == 404
    assert "deleted" in events[-1][1]["detail"]
