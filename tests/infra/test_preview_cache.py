"""Valkey for previews (#12, defect 9): the base stack owns an RBAC user group; a preview adds
a user of its own to it, allowed only keys under its prefix, with a password of its own. No
logical database index (cluster mode has only db 0) and never the base's password."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from infra import plan as plan_module
from infra.cache import APP_ACCESS, DEFAULT_ACCESS, preview_access
from infra.plan import PLACEHOLDER, Plan, render
from infra.preview import BASE_OUTPUTS
from tests.infra.conftest import of_kind, one

BASE_STACKS = ("dev", "staging", "prod")
USER = "aws:elasticache/user:User"
GROUP = "aws:elasticache/userGroup:UserGroup"
ASSOCIATION = "aws:elasticache/userGroupAssociation:UserGroupAssociation"
REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"


def _config(plan: Plan) -> dict[str, str]:
    return dict(
        one(m for m in of_kind(plan, "ConfigMap") if m["metadata"]["name"] == "record-config")[
            "data"
        ]
    )


def _redis_url(plan: Plan) -> str:
    secret = one(m for m in of_kind(plan, "Secret") if m["metadata"]["name"] == "record-secrets")
    return str(secret["stringData"]["REDIS_URL"])


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_a_base_stack_owns_the_user_group(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    users = {r["inputs"]["userName"]: r["inputs"] for r in plan.of_type(USER)}
    assert set(users) == {"default", f"record-{stack}-app"}
    assert users["default"]["accessString"] == DEFAULT_ACCESS  # required, and disabled
    assert users[f"record-{stack}-app"]["accessString"] == APP_ACCESS
    assert all(u["engine"] == "valkey" for u in users.values())
    group = one(plan.of_type(GROUP))["inputs"]
    assert group["engine"] == "valkey"
    assert sorted(group["userIds"]) == sorted(u["userId"] for u in users.values())
    replication = one(plan.of_type(REPLICATION_GROUP))["inputs"]
    assert replication["userGroupIds"] == [group["userGroupId"]]
    assert "authToken" not in replication  # RBAC replaces the AUTH token
    assert not plan.of_type(ASSOCIATION)
    assert "REDIS_KEY_PREFIX" not in _config(plan)
    assert "cacheAuthToken" not in plan.outputs


def test_a_preview_has_its_own_user_confined_to_its_prefix(plans: dict[str, Plan]) -> None:
    plan = plans["preview"]
    user = one(plan.of_type(USER))["inputs"]
    assert user["userName"] == "pr-0"
    assert user["engine"] == "valkey"
    assert user["accessString"] == preview_access("pr-0:") == "on ~pr-0:* +@all -@dangerous"
    assert user["passwords"] == ["[secret]"]
    association = one(plan.of_type(ASSOCIATION))["inputs"]
    assert association == {
        "userGroupId": f"{PLACEHOLDER}-base-cacheUserGroupId",
        "userId": user["userId"],
    }
    # The base's Valkey is used, never created; its group is not the preview's to change.
    assert not plan.of_type(GROUP)
    assert not plan.of_type(REPLICATION_GROUP)
    assert _config(plan)["REDIS_KEY_PREFIX"] == "pr-0:"
    # A preview never asks its base for the base's password.
    assert "cacheAuthToken" not in BASE_OUTPUTS


def test_preview_pods_log_in_as_the_preview_user_on_db_0(
    plans: dict[str, Plan], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Secrets revealed for this render only: the URL is checked, not just its shape.
    monkeypatch.setattr(plan_module, "_mask", lambda value: value)
    revealed: dict[str, Plan] = {stack: render(stack) for stack in ("staging", "preview")}

    def login(plan: Plan) -> tuple[Any, ...]:
        url = urlsplit(_redis_url(plan))
        return url.scheme, url.username, unquote(url.password or ""), url.hostname, url.path

    scheme, user, password, host, path = login(revealed["preview"])
    assert (scheme, user, host, path) == (
        "rediss",
        "pr-0",
        f"{PLACEHOLDER}-base-cacheendpoint",  # urlsplit lower-cases it
        "/0",
    )
    assert [password] == one(revealed["preview"].of_type(USER))["inputs"]["passwords"]
    base_users = {r["inputs"]["userName"]: r["inputs"] for r in revealed["staging"].of_type(USER)}
    base_password = base_users["record-staging-app"]["passwords"][0]
    assert login(revealed["staging"])[1:3] == ("record-staging-app", base_password)
    assert password != base_password
    assert base_password not in str(revealed["preview"].resources)
