"""The API's canary (``rollout.canary``): the Argo Rollout, the AnalysisTemplate that judges it,
and the rollout gate that fails `pulumi up` when it does not finish (``infra/rollout_gate.py``).

`pulumi up` waits on the gate's Job, not on the Rollout: ``pulumi.com/waitFor`` on a custom
resource passes at once on an update (the status Pulumi first sees is the previous revision's
Healthy) and, on an abort, only times out, without Argo's reason. The gate reads the Rollout
until Argo has observed the generation just applied and exits with its verdict and message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi

from infra import k8s as kube
from infra import rollout_gate
from infra.config import RolloutConfig
from infra.pods import SECRETS_AS_ENV_SKIP, Pods, child_options

ROLLOUT_NAME = "record-api"
# With a canary, the ALB splits traffic by weight between these two Services (Argo Rollouts
# points their selectors at the stable and the canary pods); the Ingress names the root Service
# `record-api`, whose action annotation Argo writes, and which still selects every API pod.
API_STABLE_SERVICE = "record-api-stable"
API_CANARY_SERVICE = "record-api-canary"
API_SERVICE_PORT = 80
INGRESS_NAME = "record"
ANALYSIS_TEMPLATE = "record-api-success-rate"
# The canary analysis measures once a minute, from the first pause until the rollout completes.
ANALYSIS_INTERVAL_SECONDS = 60
# Why the Rollout carries no pulumi.com/waitFor ("jsonpath={.status.phase}=Healthy", what
# pulumi-kubernetes' own await would be) nor pulumi.com/timeoutSeconds: on an update the
# provider first evaluates the condition on
# the object the apply returned, whose status is still the previous revision's Healthy, so it
# passes before Argo has even seen the new spec; on an abort it only times out, without Argo's
# message. The rollout gate's Job waits instead (tests/infra/test_rollout_gate.py shows a
# stale Healthy passing this condition and not the gate).
# Beyond its pause, each traffic step (and the final promotion) waits for new pods to start,
# pass /readyz and register as ALB targets (ip targets trail readiness by tens of seconds);
# the promotion also waits out Argo's 30 s scale-down delay of the old pods.
ROLLOUT_STEP_ALLOWANCE_SECONDS = 180
# Where the gate may reach the API server (kubernetes.default.svc, 443): anywhere. The gate
# pod holds no AWS credentials, only a token that reads Rollouts and AnalysisRuns in this
# namespace, and the cluster's service CIDR (the Service's ClusterIP range, which a policy
# engine filtering before kube-proxy's DNAT sees) is not an output of the cluster we could
# narrow this to; rollout_gate.gate_objects accepts any CIDR.
GATE_API_SERVER_CIDRS = ["0.0.0.0/0"]


def rollout_timeout_seconds(rollout: RolloutConfig) -> int:
    """How long the gate waits for the Rollout: every pause, and an allowance for each traffic
    step and the promotion. The background analysis runs alongside the pauses."""
    steps = len(rollout.steps)
    return steps * rollout.pause_seconds + (steps + 1) * ROLLOUT_STEP_ALLOWANCE_SECONDS


def spec_fingerprint(spec: Any) -> str:
    """12 hex digits of SHA-256 over the Rollout's spec: a new gate Job for every new spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ApiRolloutArgs:
    pods: Pods
    rollout: RolloutConfig
    provider: pulumi.ProviderResource
    # The namespace, and the Argo Rollouts CRDs.
    depends_on: list[pulumi.Resource]
    # The Rollout's own: the migration Job and the settings as well.
    rollout_depends_on: list[pulumi.Resource]
    # The API's pod template (infra/api.py).
    template: dict[str, Any]
    # Where the Rollout lived before the split (Workloads) and the AnalysisTemplate (the
    # Monitoring component, by URN: it is created after this one), for their aliases.
    old_parent: pulumi.Resource | None = None
    analysis_old_parent: pulumi.Input[str] | None = None


class ApiRollout(pulumi.ComponentResource):
    rollout: pulumi.CustomResource
    gate: pulumi.CustomResource

    def __init__(
        self, name: str, args: ApiRolloutArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:ApiRollout", name, None, opts)
        self.args = args
        pods = args.pods
        analysis = pods.apply(
            "analysis-success-rate",
            self._analysis_template(),
            child_options(self, args.provider, args.depends_on, args.analysis_old_parent),
        )
        spec = self._spec()
        self.rollout = pods.apply(
            "api",
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Rollout",
                "metadata": pods.meta(
                    ROLLOUT_NAME, "api", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}
                ),
                "spec": spec,
            },
            # The analysis it names exists before its first step.
            child_options(
                self, args.provider, [*args.rollout_depends_on, analysis], args.old_parent
            ),
        )
        self.gate = self._gate(spec)
        self.register_outputs({"gate": self.gate.id})

    def _spec(self) -> dict[str, Any]:
        ro = self.args.rollout
        steps: list[dict[str, Any]] = []
        for weight in ro.steps:
            steps.append({"setWeight": weight})
            steps.append({"pause": {"duration": f"{ro.pause_seconds}s"}})
        return {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": kube.selector(self.args.pods.project, "api")},
            "template": self.args.template,
            "strategy": {
                "canary": {
                    "maxSurge": "25%",
                    "maxUnavailable": 0,
                    # setWeight is the share of requests the ALB sends to the canary, not
                    # a ratio of pods (Argo's ALB traffic routing).
                    "stableService": API_STABLE_SERVICE,
                    "canaryService": API_CANARY_SERVICE,
                    "trafficRouting": {
                        "alb": {
                            "ingress": INGRESS_NAME,
                            "rootService": ROLLOUT_NAME,
                            "servicePort": API_SERVICE_PORT,
                        }
                    },
                    "analysis": {
                        "templates": [{"templateName": ANALYSIS_TEMPLATE}],
                        "startingStep": 1,
                        "args": [
                            {
                                "name": "canary-hash",
                                "valueFrom": {"podTemplateHashValue": "Latest"},
                            }
                        ],
                    },
                    "steps": steps,
                }
            },
        }

    def _analysis_template(self) -> dict[str, Any]:
        ro, pods = self.args.rollout, self.args.pods
        canary = 'rollouts_pod_template_hash="{{args.canary-hash}}"'
        # The canary's share of answers that are not 5xx. A canary that only fails has no
        # non-5xx series at all: `or vector(0)` makes that 0, not an empty (inconclusive)
        # result. No canary series, or no requests in the window (0/0 = NaN), stays empty/NaN.
        query = (
            f'(sum(rate(record_http_requests_total{{status!~"5..",{canary}}}[2m])) or vector(0))'
            f" / sum(rate(record_http_requests_total{{{canary}}}[2m]))"
        )
        # Argo evaluates both with expr: `result` is the vector's values. Neither holds for an
        # empty or NaN result, which makes the measurement inconclusive, not failed.
        measured = "len(result) > 0 && !isNaN(result[0])"
        # The analysis runs from the first pause until the rollout completes (no count); idle
        # minutes are inconclusive, and a canary idle for as long as its pauses last pauses the
        # rollout for a person (`kubectl argo rollouts promote` or `abort`).
        inconclusive_limit = max(1, len(ro.steps) * ro.pause_seconds // ANALYSIS_INTERVAL_SECONDS)
        return {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AnalysisTemplate",
            # Labelled as the Monitoring component labelled it, where it lived before.
            "metadata": {
                "name": ANALYSIS_TEMPLATE,
                "namespace": pods.namespace,
                "labels": kube.labels(pods.project, "monitoring"),
            },
            "spec": {
                "args": [{"name": "canary-hash"}],
                "metrics": [
                    {
                        "name": "success-rate",
                        "interval": f"{ANALYSIS_INTERVAL_SECONDS}s",
                        "failureLimit": 1,
                        "inconclusiveLimit": inconclusive_limit,
                        "successCondition": f"{measured} && result[0] >= {ro.min_success_rate}",
                        "failureCondition": f"{measured} && result[0] < {ro.min_success_rate}",
                        "provider": {
                            "prometheus": {
                                "address": "http://kube-prometheus-stack-prometheus."
                                "monitoring.svc:9090",
                                "query": query,
                            }
                        },
                    }
                ],
            },
        }

    def _gate(self, spec: dict[str, Any]) -> pulumi.CustomResource:
        a, pods = self.args, self.args.pods
        timeout = rollout_timeout_seconds(a.rollout)
        # The spec holds Outputs (the image): resolved, then hashed.
        fingerprint = pulumi.Output.from_input(spec).apply(spec_fingerprint)
        *support, job = rollout_gate.gate_objects(
            namespace=pods.namespace,
            rollout_name=ROLLOUT_NAME,
            image=pods.image,
            labels=kube.labels(pods.project),
            timeout_seconds=timeout,
            fingerprint=fingerprint,
            api_server_cidrs=GATE_API_SERVER_CIDRS,
        )
        opts = child_options(self, a.provider, a.depends_on)
        kinds = {
            "ServiceAccount": "sa",
            "Role": "role",
            "RoleBinding": "rolebinding",
            "NetworkPolicy": "netpol",
        }
        created = [
            pods.apply(f"rollout-gate-{kinds[manifest['kind']]}", manifest, opts)
            for manifest in support
        ]
        awaited = f"{rollout_gate.await_seconds(timeout)}s"
        return pods.apply(
            "rollout-gate",
            job,
            pulumi.ResourceOptions.merge(
                child_options(self, a.provider, [*a.depends_on, self.rollout, *created]),
                pulumi.ResourceOptions(
                    # A new fingerprint is a new Job; the old one goes after it (its TTL may
                    # already have removed it).
                    delete_before_replace=False,
                    custom_timeouts=pulumi.CustomTimeouts(create=awaited, update=awaited),
                ),
            ),
        )
