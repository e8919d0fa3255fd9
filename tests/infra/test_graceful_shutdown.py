"""An API pod stops without failing a request (issue 15, item 5): Kubernetes runs the preStop
pause (the load balancer stops sending to the pod meanwhile), then SIGTERM, and gunicorn gives
in-flight requests its graceful timeout; all of it within the pod's grace period, after which
the kubelet kills whatever is left. The graceful timeout has one source: the manifest sets
GUNICORN_GRACEFUL_TIMEOUT, which the image's app/gunicorn_conf.py reads. Likewise the keep-alive
timeout (GUNICORN_KEEPALIVE), which must outlast the load balancer's idle timeout.

tests/reliability/test_api_restart.py shows gunicorn doing so under load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from infra.plan import REPO_ROOT, Plan
from tests.infra.conftest import STACKS, of_kind, pod_templates

# gunicorn's exit after its timeout (the workers killed, the master's own shutdown) and the
# kubelet's own delays: the grace period must leave this much beyond the pause and the timeout.
EXIT_MARGIN_SECONDS = 5


def api_pods(plan: Plan) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, gunicorn container) of every workload that serves the API."""
    found = []
    for _name, spec in pod_templates(plan):
        for container in spec["containers"]:
            if container["command"][:1] == ["gunicorn"]:
                found.append((spec, container))
    return found


def env_value(container: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def in_image(setting: str, variable: str, value: str | None) -> int:
    """What app/gunicorn_conf.py makes of ``variable`` (its ``setting``), in a process of its
    own (it reads the settings once, at import)."""
    env = {k: v for k, v in os.environ.items() if k != variable}
    if value is not None:
        env[variable] = value
    result = subprocess.run(
        [sys.executable, "-c", f"import app.gunicorn_conf as c; print(c.{setting})"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stack", STACKS)
def test_the_grace_period_covers_the_pause_and_gunicorns_graceful_timeout(
    plans: dict[str, Plan], stack: str
):
    pods = api_pods(plans[stack])
    assert pods, f"{stack}: no API workload"
    for spec, container in pods:
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        graceful = env_value(container, "GUNICORN_GRACEFUL_TIMEOUT")
        assert graceful is not None, f"{stack}: the manifest does not set the graceful timeout"
        # One source: a flag would win over the environment and could say something else.
        assert "--graceful-timeout" not in container["command"]
        grace = spec["terminationGracePeriodSeconds"]
        assert pause > 0
        assert pause + int(graceful) + EXIT_MARGIN_SECONDS <= grace, (pause, graceful, grace)


@pytest.mark.parametrize(
    ("setting", "variable"),
    [("graceful_timeout", "GUNICORN_GRACEFUL_TIMEOUT"), ("keepalive", "GUNICORN_KEEPALIVE")],
)
def test_gunicorn_in_the_image_uses_what_the_manifest_sets(
    plans: dict[str, Plan], setting: str, variable: str
):
    values = {
        env_value(container, variable)
        for plan in plans.values()
        for _spec, container in api_pods(plan)
    }
    assert len(values) == 1, values
    (value,) = values
    assert value is not None
    assert in_image(setting, variable, value) == int(value)
    # Another value is honoured too: the configuration reads it, it does not merely agree.
    assert in_image(setting, variable, str(int(value) + 7)) == int(value) + 7


def alb_idle_timeouts(plan: Plan) -> set[int]:
    found = set()
    for ingress in of_kind(plan, "Ingress"):
        attributes = (
            ingress["metadata"]
            .get("annotations", {})
            .get("alb.ingress.kubernetes.io/load-balancer-attributes", "")
        )
        for attribute in attributes.split(","):
            if attribute.startswith("idle_timeout.timeout_seconds="):
                found.add(int(attribute.split("=", 1)[1]))
    return found


def test_gunicorn_keeps_idle_connections_longer_than_the_load_balancer(plans: dict[str, Plan]):
    """Else the ALB may send a request on a connection gunicorn is closing: a 502 (AWS's
    advice for ALB targets). A preview shares its base's load balancer."""
    idle = set().union(*(alb_idle_timeouts(plan) for plan in plans.values()))
    assert idle, "no load balancer sets its idle timeout"
    for stack, plan in plans.items():
        for _spec, container in api_pods(plan):
            keepalive = env_value(container, "GUNICORN_KEEPALIVE")
            assert keepalive is not None, stack
            assert int(keepalive) > max(idle), (stack, keepalive, idle)
