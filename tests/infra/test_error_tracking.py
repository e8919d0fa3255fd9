"""Error tracking in a deployed stack (app/kit/sentry.py): the DSN (a secret: it carries a key)
reaches the pods through their Secret only when record:sentryDsn is set; every stack says which
install it is (SENTRY_ENVIRONMENT); the release is the image's own build argument (test_images)."""

from __future__ import annotations

from typing import Any

from infra.plan import Plan, render
from tests.infra.conftest import of_kind, one

DSN = "https://public-key@o1.ingest.example.io/2"


def _named(plan: Plan, kind: str, name: str) -> dict[str, Any]:
    return one(m for m in of_kind(plan, kind) if m["metadata"]["name"] == name)


def test_the_dsn_reaches_the_pods_as_a_secret_when_set() -> None:
    plan = render("staging", {"record:sentryDsn": DSN})
    secret = _named(plan, "Secret", "record-secrets")
    assert secret["stringData"]["SENTRY_DSN"] == "[secret]"  # kept secret in the state
    config = _named(plan, "ConfigMap", "record-config")["data"]
    assert "SENTRY_DSN" not in config
    assert config["SENTRY_ENVIRONMENT"] == "staging"
    assert DSN not in str(config)


def test_without_a_dsn_nothing_is_sent(plans: dict[str, Plan]) -> None:
    for stack, plan in plans.items():
        secret = _named(plan, "Secret", "record-secrets")
        assert "SENTRY_DSN" not in secret["stringData"], stack
        assert _named(plan, "ConfigMap", "record-config")["data"]["SENTRY_ENVIRONMENT"] == stack
