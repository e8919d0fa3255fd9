"""The request owns its transaction, and commits it before the response leaves."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.kit.deps import DbConn


async def test_commit_happens_before_the_response_is_sent(app: FastAPI, client, settings):
    events: list[str] = []

    @app.post("/test-only/write")
    async def write(conn: DbConn) -> dict[str, str]:
        original = conn.commit

        async def commit() -> None:
            await original()
            events.append("commit")

        conn.commit = commit  # type: ignore[method-assign]
        await conn.execute("SELECT 1")
        return {"ok": "yes"}

    inner = app.middleware_stack
    assert inner is not None

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                events.append("response")
            await send(message)

        await inner(scope, receive, send_wrapper)

    app.middleware_stack = spy  # type: ignore[assignment]
    try:
        response = await client.post("/test-only/write")
    finally:
        app.middleware_stack = inner
    assert response.status_code == 200
    assert events.index("commit") < events.index("response"), events


async def test_signup_then_immediately_me(client):
    # The session written by signup is visible to the very next request.
    for n in range(5):
        signed = await client.post(
            "/api/auth/signup",
            json={
                "email": f"fast{n}@example.com",
                "password": "plum-tide-orbit-velvet-42",
                "name": "Fast",
            },
        )
        assert signed.status_code == 201
        me = await client.get(
            "/api/me", headers={"Authorization": f"Bearer {signed.json()['session_token']}"}
        )
        assert me.status_code == 200
