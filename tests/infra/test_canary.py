"""The API's canary is gated: `pulumi up` waits on the rollout gate's Job, the ALB splits
requests by the canary's weight, and the background analysis judges the canary for as long as
it runs.

The analysis query is taken from the rendered AnalysisTemplate and evaluated by promtool on
recorded series; Argo's verdict on the result comes from tests/infra/argo_analysis.py.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan import Plan, render
from infra.rollout import ROLLOUT_STEP_ALLOWANCE_SECONDS, spec_fingerprint
from infra.rollout_gate import GATE_NAME, await_seconds
from tests.infra.argo_analysis import ExprError, MetricRun, Phase, eval_condition, evaluate_result
from tests.infra.conftest import of_kind, one

CANARY_STACKS = ("staging", "prod")
CANARY_HASH = "6d4f8b9c7"
STABLE_HASH = "5c8e7a1f2"


def _rollout(plan: Plan) -> dict[str, Any]:
    return one(of_kind(plan, "Rollout"))


def _metric(plan: Plan) -> dict[str, Any]:
    return one(one(of_kind(plan, "AnalysisTemplate"))["spec"]["metrics"])


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert match, f"not a duration Argo takes: {duration!r}"
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def _pause_seconds(rollout: dict[str, Any]) -> int:
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    pauses = [step["pause"] for step in steps if "pause" in step]
    # A pause without a duration waits for a person: `pulumi up` would always time out.
    assert pauses
    assert all("duration" in pause for pause in pauses)
    return sum(_seconds(pause["duration"]) for pause in pauses)


def _service(plan: Plan, name: str) -> dict[str, Any]:
    return one(m for m in of_kind(plan, "Service") if m["metadata"]["name"] == name)


# -- pulumi up waits, on the rollout gate ---------------------------------------------------


def _gate_job(plan: Plan) -> dict[str, Any]:
    return one(
        r
        for r in plan.of_type("kubernetes:batch/v1:Job")
        if r["inputs"]["metadata"]["name"].startswith(f"{GATE_NAME}-")
    )


def _resource(plan: Plan, type_token: str, manifest_name: str) -> dict[str, Any]:
    return one(
        r for r in plan.of_type(type_token) if r["inputs"]["metadata"]["name"] == manifest_name
    )


@pytest.mark.parametrize("stack", CANARY_STACKS)
def test_pulumi_up_waits_on_the_rollout_gate(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    rollout = _rollout(plan)
    namespace = rollout["metadata"]["namespace"]
    # Not pulumi-kubernetes' own await: on an update it passes on the previous revision's
    # Healthy (tests/infra/test_rollout_gate.py), and on an abort it only times out.
    annotations = rollout["metadata"].get("annotations", {})
    assert "pulumi.com/waitFor" not in annotations
    assert "pulumi.com/timeoutSeconds" not in annotations

    job = _gate_job(plan)
    pauses = _pause_seconds(rollout)
    weights = [
        s["setWeight"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "setWeight" in s
    ]
    # The gate waits for every pause, and for each step's pods and the promotion's.
    timeout = pauses + (len(weights) + 1) * ROLLOUT_STEP_ALLOWANCE_SECONDS
    container = one(job["inputs"]["spec"]["template"]["spec"]["containers"])
    assert container["command"] == [
        "python", "-m", "infra.rollout_gate",
        "--namespace", namespace, "--rollout", rollout["metadata"]["name"],
        "--timeout", str(timeout),
    ]  # fmt: skip
    # The API's own image, which holds infra/.
    assert container["image"] == one(rollout["spec"]["template"]["spec"]["containers"])["image"]
    # Every pause, plus time for each step's pods (and the promotion's) to start and register.
    assert timeout >= pauses + 120 * (len(weights) + 1), (timeout, pauses)
    # ...but an abort still surfaces within the hour.
    assert timeout <= 3600
    # Kubernetes stops the gate after its own timeout, and Pulumi waits for the Job longer
    # still, so that `pulumi up` reports the gate's verdict, not a timeout of its own.
    deadline = job["inputs"]["spec"]["activeDeadlineSeconds"]
    assert timeout < deadline
    awaited = f"{await_seconds(timeout)}s"
    assert job["customTimeouts"] == {"create": awaited, "update": awaited}
    assert deadline < await_seconds(timeout)

    # It starts once the Rollout's update is applied, and with its account, rights and policy.
    rollout_resource = _resource(plan, "kubernetes:argoproj.io/v1alpha1:Rollout", "record-api")
    assert rollout_resource["name"] in job["dependsOn"]
    for type_token in (
        "kubernetes:core/v1:ServiceAccount",
        "kubernetes:rbac.authorization.k8s.io/v1:Role",
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
    ):
        support = _resource(plan, type_token, GATE_NAME)
        assert support["name"] in job["dependsOn"], type_token
    role = one(m for m in of_kind(plan, "Role") if m["metadata"]["name"] == GATE_NAME)
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    binding = one(m for m in of_kind(plan, "RoleBinding") if m["metadata"]["name"] == GATE_NAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": GATE_NAME,
    }
    # The Job is named by the Rollout's spec: an update is a new Job, which Pulumi awaits.
    assert job["inputs"]["metadata"]["name"] == f"{GATE_NAME}-{spec_fingerprint(rollout['spec'])}"


def test_a_new_image_is_a_new_gate_job(plans: dict[str, Plan]) -> None:
    """Pulumi awaits a Job only when it creates it: the same name would skip the gate."""
    before = _gate_job(plans["staging"])
    another = f"000000000000.dkr.ecr.eu-west-1.amazonaws.com/ci/api@sha256:{'1' * 64}"
    after = _gate_job(render("staging", {"record:image": {"prebuilt": {"api": another}}}))
    assert _image(after) == another
    assert _image(before) != _image(after)
    assert before["inputs"]["metadata"]["name"] != after["inputs"]["metadata"]["name"]


def _image(job: dict[str, Any]) -> str:
    return str(one(job["inputs"]["spec"]["template"]["spec"]["containers"])["image"])


def test_a_stack_without_a_canary_has_no_rollout_to_wait_for(plans: dict[str, Plan]) -> None:
    assert not of_kind(plans["dev"], "Rollout")
    api = one(
        m for m in of_kind(plans["dev"], "Deployment") if m["metadata"]["name"] == "record-api"
    )
    assert "pulumi.com/waitFor" not in api["metadata"].get("annotations", {})
    for plan in (plans["dev"], plans["preview"]):
        assert not [m for m in plan.manifests if m["metadata"]["name"].startswith(GATE_NAME)]


# -- the ALB splits traffic by weight ------------------------------------------------------


@pytest.mark.parametrize("stack", CANARY_STACKS)
def test_canary_weights_route_requests_through_the_alb(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    rollout = _rollout(plan)
    canary = rollout["spec"]["strategy"]["canary"]
    alb = canary["trafficRouting"]["alb"]
    pods = rollout["spec"]["selector"]["matchLabels"]
    namespace = rollout["metadata"]["namespace"]

    # Two Services Argo points at the stable and the canary pods, both on the routed port.
    assert canary["stableService"] != canary["canaryService"]
    for name in (canary["stableService"], canary["canaryService"], alb["rootService"]):
        service = _service(plan, name)
        assert service["metadata"]["namespace"] == namespace
        assert service["spec"]["selector"] == pods
        assert alb["servicePort"] in [port["port"] for port in service["spec"]["ports"]]

    # The Ingress sends every public path to the root Service's action, which Argo writes
    # (alb.ingress.kubernetes.io/actions.<rootService>) with the current weights.
    ingress = one(of_kind(plan, "Ingress"))
    assert ingress["metadata"]["name"] == alb["ingress"]
    assert ingress["metadata"]["namespace"] == namespace
    assert ingress["spec"]["ingressClassName"] == "alb"
    backends = [p["backend"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert backends
    for backend in backends:
        assert backend == {
            "service": {"name": alb["rootService"], "port": {"name": "use-annotation"}}
        }
    # Argo owns the action; a value from Pulumi would reset the weights on every update.
    assert not any(
        key.startswith("alb.ingress.kubernetes.io/actions.")
        for key in ingress["metadata"]["annotations"]
    )


@pytest.mark.parametrize("stack", CANARY_STACKS)
def test_each_api_pod_is_scraped_once(plans: dict[str, Plan], stack: str) -> None:
    """The ServiceMonitor reaches the API through the root Service only: through the stable
    and canary Services too, every series would be counted twice."""
    plan = plans[stack]
    wanted = one(of_kind(plan, "ServiceMonitor"))["spec"]["selector"]["matchLabels"]
    scraped = [
        m["metadata"]["name"]
        for m in of_kind(plan, "Service")
        if wanted.items() <= m["metadata"]["labels"].items()
    ]
    assert scraped == ["record-api"]


def test_without_a_canary_the_ingress_forwards_to_the_service(plans: dict[str, Plan]) -> None:
    plan = plans["dev"]
    ingress = one(of_kind(plan, "Ingress"))
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"] == {"service": {"name": "record-api", "port": {"name": "http"}}}
    assert [
        m["metadata"]["name"] for m in of_kind(plan, "Service") if "api" in m["metadata"]["name"]
    ] == ["record-api"]


# -- the analysis runs as long as the canary ----------------------------------------------


@pytest.mark.parametrize("stack", CANARY_STACKS)
def test_analysis_runs_for_the_whole_canary(plans: dict[str, Plan], stack: str) -> None:
    plan = plans[stack]
    rollout = _rollout(plan)
    analysis = rollout["spec"]["strategy"]["canary"]["analysis"]
    template = one(of_kind(plan, "AnalysisTemplate"))
    assert analysis["templates"] == [{"templateName": template["metadata"]["name"]}]
    metric = _metric(plan)
    pauses = _pause_seconds(rollout)
    interval = _seconds(metric["interval"])
    # Background analysis without a count measures until the rollout completes; a count must
    # at least cover the pauses, or the canary's later steps go unwatched.
    if "count" in metric:
        assert int(metric["count"]) * interval >= pauses
    # Quiet minutes across the whole pause schedule do not end the analysis on their own.
    idle = [Phase.INCONCLUSIVE] * (pauses // interval)
    assert MetricRun(metric, idle).phase() is Phase.RUNNING


# -- the analysis query on recorded series -------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Per-minute request counts of the canary pods by status, and what Argo should decide."""

    name: str
    canary: dict[str, int]
    result: list[float]
    verdict: Phase
    # The canary's counters exist but did not move: 0 requests in the window.
    canary_idle_series: bool = False


SCENARIOS = [
    Scenario("healthy canary", {"200": 120, "201": 30}, [1.0], Phase.SUCCESSFUL),
    Scenario("5% errors", {"200": 95, "500": 5}, [0.95], Phase.FAILED),
    Scenario("only errors", {"503": 40}, [0.0], Phase.FAILED),
    Scenario("no canary traffic", {}, [], Phase.INCONCLUSIVE),
    Scenario("idle canary", {}, [math.nan], Phase.INCONCLUSIVE, canary_idle_series=True),
]


def _series(scenario: Scenario) -> list[dict[str, str]]:
    def counter(pod_hash: str, status: str, per_minute: int) -> dict[str, str]:
        return {
            "series": (
                f'record_http_requests_total{{method="GET",route="/api/recordings",'
                f'status="{status}",rollouts_pod_template_hash="{pod_hash}"}}'
            ),
            "values": f"0+{per_minute}x15",
        }

    # The stable pods answer a lot, some with errors: none of it may count for the canary.
    series = [counter(STABLE_HASH, "200", 900), counter(STABLE_HASH, "500", 300)]
    series += [counter(CANARY_HASH, status, n) for status, n in scenario.canary.items()]
    if scenario.canary_idle_series:
        series.append(counter(CANARY_HASH, "200", 0))
    return series


def _check(query: str, result: list[float]) -> dict[str, Any]:
    if not result:
        return {"expr": query, "eval_time": "10m", "exp_samples": []}
    (value,) = result
    if math.isnan(value):
        # promtool cannot expect NaN; only NaN is unequal to itself.
        return {
            "expr": f"({query}) != bool ({query})",
            "eval_time": "10m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
    # Rates are floats: 95/100 of a rate comes out as 0.9500000000000001.
    return {
        "expr": f"abs(({query}) - {value}) < bool 1e-9",
        "eval_time": "10m",
        "exp_samples": [{"labels": "{}", "value": 1}],
    }


def _promtool_results(
    promtool: str, query: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    tests = [
        {
            "name": scenario.name,
            "interval": "1m",
            "input_series": _series(scenario),
            "promql_expr_test": [_check(query, scenario.result)],
        }
        for scenario in SCENARIOS
    ]
    path = tmp_path / "canary-analysis.test.yaml"
    path.write_text(yaml.safe_dump({"evaluation_interval": "1m", "tests": tests}))
    return subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install prometheus (.ci/run does)"
    return path


def _query(metric: dict[str, Any]) -> str:
    query = str(metric["provider"]["prometheus"]["query"])
    assert "{{args.canary-hash}}" in query
    return query.replace("{{args.canary-hash}}", CANARY_HASH)


@pytest.mark.parametrize("stack", CANARY_STACKS)
def test_the_analysis_query_measures_the_canary_alone(
    plans: dict[str, Plan], stack: str, promtool: str, tmp_path: Path
) -> None:
    result = _promtool_results(promtool, _query(_metric(plans[stack])), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_promtool_check_can_fail(promtool: str, tmp_path: Path) -> None:
    """The query before the fix: a canary that only answers 5xx has no non-5xx series, so its
    success rate was an empty result (inconclusive) instead of 0."""
    canary = f'rollouts_pod_template_hash="{CANARY_HASH}"'
    old = (
        f'sum(rate(record_http_requests_total{{status!~"5..",{canary}}}[2m]))'
        f" / sum(rate(record_http_requests_total{{{canary}}}[2m]))"
    )
    result = _promtool_results(promtool, old, tmp_path)
    assert result.returncode != 0
    # One check fails, the "only errors" one (expected 0.0): the old query returned nothing.
    output = result.stdout + result.stderr
    assert output.count("expr:") == 1
    assert ") - 0.0) < bool" in output
    assert "got: nil" in output


@pytest.mark.parametrize("stack", CANARY_STACKS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_argo_decides_on_the_measured_result(
    plans: dict[str, Plan], stack: str, scenario: Scenario
) -> None:
    """The results promtool confirmed above, judged by the template's own conditions."""
    assert evaluate_result(scenario.result, _metric(plans[stack])) is scenario.verdict


@pytest.mark.parametrize("stack", CANARY_STACKS)
def test_an_idle_canary_never_fails_the_analysis(plans: dict[str, Plan], stack: str) -> None:
    metric = _metric(plans[stack])
    idle = [evaluate_result([], metric)] * 3 + [evaluate_result([math.nan], metric)] * 3
    assert MetricRun(metric, idle).phase() not in (Phase.FAILED, Phase.ERROR)
    # ...while errors fail it once they exceed the failure limit.
    failing = [evaluate_result([0.95], metric)] * (int(metric.get("failureLimit", 0)) + 1)
    assert MetricRun(metric, failing).phase() is Phase.FAILED


def test_the_old_template_failed_an_idle_canary() -> None:
    """Before: only `result[0] >= x`, five measurements. An empty result errs, and five errors
    in a row end the run in Error, which aborts the rollout."""
    old = {
        "interval": "1m",
        "count": 5,
        "failureLimit": 1,
        "successCondition": "result[0] >= 0.995",
    }
    assert evaluate_result([], old) is Phase.ERROR
    assert evaluate_result([math.nan], old) is Phase.FAILED
    assert MetricRun(old, [evaluate_result([], old)] * 5).phase() is Phase.ERROR
    assert MetricRun(old, [evaluate_result([math.nan], old)] * 2).phase() is Phase.FAILED


# -- the emulation of Argo's conditions ----------------------------------------------------


def test_conditions_follow_expr() -> None:
    assert eval_condition([0.5], "len(result) > 0 && result[0] < 0.9")
    assert not eval_condition([], "len(result) > 0 && result[0] < 0.9")  # short circuit
    assert eval_condition([], "len(result) == 0 || result[0] < 0.9")
    assert eval_condition([math.nan], "!isNaN(result[0]) || true") is True
    assert eval_condition([1.0], "!(result[0] < 0.5)")
    with pytest.raises(ExprError, match="index out of range"):
        eval_condition([], "result[0] >= 0.9")
    with pytest.raises(ExprError, match="unknown name"):
        eval_condition([1.0], "asInt(result[0]) > 0")
    with pytest.raises(ExprError, match="expected bool"):
        eval_condition([1.0], "result[0]")


def test_measurement_phases_follow_argo() -> None:
    only_success = {"successCondition": "result[0] >= 0.9"}
    both = {"successCondition": "result[0] >= 0.9", "failureCondition": "result[0] < 0.5"}
    assert evaluate_result([0.95], only_success) is Phase.SUCCESSFUL
    assert evaluate_result([0.7], only_success) is Phase.FAILED
    assert evaluate_result([0.7], both) is Phase.INCONCLUSIVE
    assert evaluate_result([0.2], both) is Phase.FAILED
    assert evaluate_result([], both) is Phase.ERROR
    assert evaluate_result([0.2], {}) is Phase.SUCCESSFUL
    assert (
        MetricRun({"inconclusiveLimit": 1}, [Phase.INCONCLUSIVE] * 2).phase() is Phase.INCONCLUSIVE
    )
    assert MetricRun({"count": 2}, [Phase.SUCCESSFUL] * 2).phase() is Phase.SUCCESSFUL
    assert MetricRun({}, [Phase.ERROR] * 4 + [Phase.SUCCESSFUL]).phase() is Phase.RUNNING
