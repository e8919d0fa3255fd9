"""`record search` and `record ask` against a real API server on loopback, whose model clients
reach the real model server (in-process), over recordings written as the worker writes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.kit.redis import create_redis
from tests.app.conftest import Tenant
from tests.app.retrieval import Seeder
from tests.app.test_client_cli import LiveApi, run, serving


@pytest.fixture
def live_api_with_models(settings: Any, model_app: object) -> Iterator[LiveApi]:
    from app.main import create_app

    app = create_app(
        settings.model_copy(
            update={"openai_base_url": "http://models.test/v1", "openai_max_retries": 0}
        ),
        model_transport=httpx2.ASGITransport(app=model_app),  # type: ignore[arg-type]
    )
    with serving(app) as api:
        yield api


async def test_search_and_ask_from_the_terminal(
    live_api_with_models: LiveApi, settings: Any, local_models: Any, tmp_path: Path
):
    api = live_api_with_models
    org_id, key = api.tenant_key("CLI search")
    _other_org, other_key = api.tenant_key("CLI elsewhere")
    redis = create_redis(settings.redis_url, timeout=2.0)
    try:
        seeder = Seeder(settings, local_models, redis)
        tenant = Tenant(
            client=None,  # type: ignore[arg-type]
            org_id=org_id,
            user_id=_owner_of(settings, org_id),
            email="",
            session="",
            owner_key=key,
        )
        recording_id, _ = await seeder.recording(
            tenant,
            "Planning sync",
            ["Maria will prepare the budget review by Friday.", "The launch moves to May."],
            seconds_each=65.0,
        )
    finally:
        await redis.aclose()

    result = run("search", "who prepares the budget?", url=api.url, key=key, state_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "Planning sync" in result.output
    assert "0:00-1:05" in result.output
    assert "Maria will prepare the budget review" in result.output
    result = run("search", "budget", url=api.url, key=other_key, state_dir=tmp_path)
    assert result.exit_code == 0
    assert "Nothing found." in result.output  # another org's recordings are not its own

    result = run("ask", "When does the launch happen?", url=api.url, key=key, state_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "The launch moves to May. [" in result.output
    assert "Planning sync 1:05-2:10: The launch moves to May." in result.output
    conversation = result.output.split("--conversation ")[1].split()[0]
    result = run(
        "ask", "And the budget?", "--conversation", conversation,
        url=api.url, key=key, state_dir=tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert conversation in result.output

    for args in (
        ("ask", "hi", "--conversation", str(uuid.uuid4())),
        ("ask", "hi", "--recording", recording_id),  # another org's
        ("search", "budget", "--mode", "fuzzy"),
    ):
        result = run(*args, url=api.url, key=other_key, state_dir=tmp_path)
        assert result.exit_code == 1, result.output
        assert "error:" in result.output
        assert "Traceback" not in result.output


def _owner_of(settings: Any, org_id: str) -> str:
    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT user_id::text FROM memberships WHERE org_id = %s AND role = 'owner'",
            (org_id,),
        ).fetchone()
    assert row is not None
    return str(row[0])
