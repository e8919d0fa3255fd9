"""An API pod stops without failing a request (issue 15, item 5): Kubernetes runs the preStop
pause (the load balancer stops sending to the pod meanwhile), then SIGTERM, and gunicorn gives
in-flight requests its graceful timeout; all of it within the pod's grace period, after which
the kubelet kills whatever is left. The graceful timeout has one source: the manifest sets
GUNICORN_GRACEFUL_TIMEOUT, which the image's app/gunicorn_conf.py reads.

tests/reliability/test_api_restart.py shows gunicorn doing so under load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from infra.plan import REPO_ROOT, Plan
from tests.infra.conftest import STACKS, pod_templates

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


def graceful_timeout_in_image(value: str | None) -> int:
    """What app/gunicorn_conf.py makes of the environment, in a process of its own (it reads
    the settings once, at import)."""
    env = {k: v for k, v in os.environ.items() if k != "GUNICORN_GRACEFUL_TIMEOUT"}
    if value is not None:
        env["GUNICORN_GRACEFUL_TIMEOUT"] = value
    result = subprocess.run(
        [sys.executable, "-c", "import app.gunicorn_conf as c; print(c.graceful_timeout)"],
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


def test_gunicorn_in_the_image_uses_the_timeout_the_manifest_sets(plans: dict[str, Plan]):
    values = {
        env_value(container, "GUNICORN_GRACEFUL_TIMEOUT")
        for plan in plans.values()
        for _spec, container in api_pods(plan)
    }
    assert len(values) == 1, values
    (value,) = values
    assert value is not None
    assert graceful_timeout_in_image(value) == int(value)
    # Another value is honoured too: the configuration reads it, it does not merely agree.
    assert graceful_timeout_in_image(str(int(value) + 7)) == int(value) + 7
