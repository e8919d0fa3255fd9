"""Property-based API testing: schemathesis generates requests for every operation in our own
/openapi.json, authenticated as an org owner, and checks that no answer is a 5xx and that every
answer (status code, content type, headers, body) is what the document says.

The app under test runs in schemathesis' ASGI transport (its own event-loop thread, where it
also runs the lifespan), on the same database and Valkey as the `client` the tenant was made
with.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx2
import hypothesis.core
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.worker.conftest import FakeOpenAI

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 15
# Operations that would end the run early if aimed at the tenant itself.
DESTRUCTIVE = {("DELETE", "/api/orgs/{org_id}")}


@pytest.fixture
def api(settings: Any) -> Any:
    # Rate limits would turn a fuzzing run into a wall of 429s; they have their own tests.
    # OpenAI is outside: a fake answers for it (search embeds, chat answers), so a 502 here
    # would be ours, not the network's.
    application = create_app(
        settings.model_copy(
            update={"ratelimit_enabled": False, "openai_base_url": "http://fake-openai.test/v1"}
        ),
        model_transport=httpx2.MockTransport(FakeOpenAI()),
    )
    try:
        yield application
    finally:
        shutdown_lifespans()


def _run_operation(operation: Any, strategy: Any, headers: dict[str, str]) -> list[str]:
    failures: list[str] = []

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except AssertionError as exc:  # schemathesis' check failures are AssertionErrors
            failures.append(f"{operation.label}: {str(exc)[:1500]}")

    run()
    return failures


def test_every_operation_conforms_and_never_5xx(api: Any, org_a: Any) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    headers = {"Authorization": f"Bearer {org_a.owner_key}"}
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
        if "{org_id}" in operation.path and (operation.method.upper(), operation.path) not in (
            DESTRUCTIVE
        ):
            # Also aim at the caller's own org, so the requests get past the tenant check.
            strategies += [
                operation.as_strategy(
                    generation_mode=mode, path_parameters={"org_id": org_a.org_id}
                )
                for mode in modes
            ]
        failures += _run_operation(operation, st.one_of(strategies), headers)
        tested += 1
    assert tested >= 15, "the OpenAPI document lost operations"
    assert not failures, "\n\n".join(failures)
    # Keep the suite fast: this run is bounded by MAX_EXAMPLES per operation.
    assert time.monotonic() - started < 120


# The stateful phase: schemathesis chains calls with the links it infers from the document
# (an id in one response feeds the path of the next), so requests reach real objects instead
# of 404s. Its only check is "no 5xx": a chain is a few calls, conformance is checked above.
SEEDS = (1, 2, 3)
STATEFUL_EXAMPLES = 12  # scenarios per seed: the three seeds together stay near 30 s


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_stateful_chains_never_5xx(
    api: Any, org_a: Any, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api).exclude(
        # Deleting the tenant (or revoking its key) would leave the rest of a chain at 401.
        operation_id=[
            "delete_org_api_orgs__org_id__delete",
            "revoke_api_key_api_orgs__org_id__api_keys__key_id__delete",
        ]
    )
    headers = {"Authorization": f"Bearer {org_a.owner_key}"}

    class Chains(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            # Over whatever bearer token the generator made up for the security scheme.
            case.headers = {**(case.headers or {}), **headers}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=[not_a_server_error])

    # Hypothesis' own seed for unseeded runs (what `--hypothesis-seed` sets).
    monkeypatch.setattr(hypothesis.core, "global_force_seed", seed)
    Chains.run(
        settings=hypothesis_settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


async def test_a_share_cursor_with_a_nul_is_a_400_not_a_500(client: Any, org_a: Any) -> None:
    # The server error schemathesis found: /api/share's cursor carries a text id, which went
    # to PostgreSQL as it was, and text cannot hold NUL (psycopg's DataError, a 500).
    forged = json.dumps(["2024-01-01T00:00:00+00:00", "ab\x00cd"]).encode()
    cursor = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    response = await client.get("/api/share", params={"cursor": cursor}, headers=org_a.auth())
    assert response.status_code == 400, response.text
    assert "cursor" in response.json()["detail"]
