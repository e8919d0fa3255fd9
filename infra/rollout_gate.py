"""The rollout gate: a Job that fails `pulumi up` unless the API's Rollout finishes its update.

``pulumi.com/waitFor: jsonpath={.status.phase}=Healthy`` on the Rollout can pass at once on an
update: pulumi-kubernetes first evaluates the condition on the object the apply returned, whose
status is still the previous revision's ``Healthy``, and its JSONPath condition ignores
generations. Generic generation checks (kstatus) do not help either: Argo Rollouts writes
``status.observedGeneration`` as a string. This gate reads the Rollout until Argo has observed
the current generation and judges only that generation's status.

Two halves, one module so the command and the objects that run it cannot drift:

- ``python -m infra.rollout_gate --namespace NS --rollout NAME --timeout SECONDS``, run in the
  cluster from the app image (stdlib and httpx only: the image has no Pulumi and no Kubernetes
  client). Exit 0: the update finished; 1: Argo aborted it or marked it Degraded; 2: it did
  not finish in time; 3: the gate could not read the Rollout (RBAC, a bad token).
- ``gate_objects(...)``: the ServiceAccount, Role, RoleBinding, NetworkPolicy and Job that run
  the command with nothing but read access to Rollouts and AnalysisRuns in one namespace.
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from infra.hardening import container_security, pod_security

if TYPE_CHECKING:  # the image that runs the gate has no Pulumi; only the builder's callers do
    import pulumi

API_SERVER = "https://kubernetes.default.svc"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ROLLOUTS_API = "apis/argoproj.io/v1alpha1"

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_TIMED_OUT = 2
EXIT_UNREADABLE = 3

# Argo's own `kubectl argo rollouts status --watch` re-reads every second; every few seconds is
# plenty for a rollout whose pauses last minutes, and keeps the API server's load negligible.
POLL_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
# A 401/403 this soon after the Job started may be a RoleBinding the API server's RBAC cache
# has not seen yet (Pulumi creates it just before the Job); after that it is a mistake that
# waiting will not fix.
AUTH_GRACE_SECONDS = 30.0

GATE_NAME = "record-rollout-gate"
GATE_COMPONENT = "rollout-gate"
# Kubernetes stops the Job this long after the gate's own timeout (so the gate reports the state
# it was stuck in rather than being killed mid-sentence), and Pulumi should wait a little
# longer still, so that it reports the Job's own failure rather than a timeout of its own.
DEADLINE_MARGIN_SECONDS = 60
AWAIT_MARGIN_SECONDS = 120
# Long enough to read the gate's log after a failed `pulumi up`; the TTL controller then
# deletes the Job (Pulumi only notices on a refresh, and a re-created gate passes at once).
TTL_SECONDS_AFTER_FINISHED = 86400
# The projected token's lifetime (Kubernetes' minimum is 600 s); the kubelet renews it at 80 %
# and the gate re-reads the file before every request, as client-go does.
TOKEN_EXPIRATION_SECONDS = 3600
_FINGERPRINT = re.compile(r"[a-z0-9]{1,40}")


# -- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    state: Literal["waiting", "passed", "failed"]
    summary: str


def judge(rollout: Mapping[str, Any]) -> Verdict:
    """Argo Rollouts' own reading of a Rollout, applied to the current generation only.

    Mirrors argo-rollouts ``utils/rollout/rolloututil.go``: ``GetRolloutPhase`` (a phase means
    nothing until ``isGenerationObserved``, and ``IsUnpausing`` is still progressing; the
    controller computes ``status.phase`` since v1.0, in the same status write that sets
    ``observedGeneration``), ``CalculateRolloutPhase`` (an ``InvalidSpec`` condition, or the
    RolloutAborted/TimedOut reasons, make it Degraded), and ``IsFullyPromoted`` together with
    ``utils/conditions`` ``RolloutCompleted`` (``stableRS != ""`` and ``stableRS ==
    currentPodHash``). ``kubectl argo rollouts status --watch`` (pkg/kubectl-argo-rollouts/cmd/
    status) stops at Healthy or Degraded the same way. Stricter than Argo's
    ``isGenerationObserved`` in one respect: a non-numeric observedGeneration (v0.9's hash
    format) is not taken as observed, since every controller since v0.10 writes a number.
    """
    metadata = rollout.get("metadata") or {}
    status = rollout.get("status") or {}
    generation = str(metadata.get("generation"))
    # A string since Argo v0.10; str() also accepts a number, should a controller write one.
    observed = status.get("observedGeneration")
    if observed is None or str(observed) != generation:
        return Verdict(
            "waiting",
            f"waiting for rollout spec update to be observed "
            f"(generation {generation}, observed {observed})",
        )
    # Failures too only at this generation: the last deploy's abort (Degraded, abort: true) is
    # still in the status the apply returns when this deploy fixes it.
    failure = _failure(status)
    if failure is not None:
        return Verdict("failed", failure)
    if status.get("controllerPause") and not status.get("pauseConditions"):
        return Verdict("waiting", "waiting for rollout to unpause")
    phase = status.get("phase") or "Unknown"
    message = status.get("message") or ""
    stable, current = status.get("stableRS") or "", status.get("currentPodHash") or ""
    if phase == "Healthy" and stable and stable == current:
        return Verdict(
            "passed", f"Healthy at generation {generation}: pod hash {current} is stable"
        )
    detail = f"phase {phase}"
    if message:
        detail += f": {message}"
    if phase == "Paused":
        reasons = [c.get("reason", "") for c in status.get("pauseConditions") or []]
        if reasons:
            detail += f" (pause: {', '.join(reasons)})"
    if stable != current:
        step = status.get("currentStepIndex")
        detail += f"; stable {stable or '-'} vs current {current or '-'}, step {step}"
    return Verdict("waiting", detail)


def _failure(status: Mapping[str, Any]) -> str | None:
    """Why Argo gave up on the observed generation, or None while it has not."""
    message = status.get("message") or ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "InvalidSpec":
            return f"InvalidSpec: {condition.get('message', '')}"
    if status.get("abort") is True:
        return f"aborted: {message or status.get('phase')}"
    if status.get("phase") == "Degraded":
        return f"Degraded: {message}"
    return None


# -- reading the API ----------------------------------------------------------------------------


class Unreadable(Exception):
    """The API refused the gate (401/403)."""


@dataclass(frozen=True)
class Cluster:
    api_server: str
    service_account_dir: Path

    def client(self) -> httpx.Client:
        ca = self.service_account_dir / "ca.crt"
        # Only the cluster's CA: the API server's certificate is signed by it, not a public CA.
        # (A plain-http API server exists only in tests, where the file may be absent.)
        verify = ssl.create_default_context(cafile=str(ca)) if ca.exists() else True
        return httpx.Client(
            base_url=self.api_server, verify=verify, timeout=REQUEST_TIMEOUT_SECONDS
        )

    def token(self) -> str:
        # Re-read every time: the kubelet rotates the projected token while the gate runs.
        return (self.service_account_dir / "token").read_text().strip()

    def get(self, client: httpx.Client, path: str) -> dict[str, Any]:
        response = client.get(path, headers={"Authorization": f"Bearer {self.token()}"})
        if response.status_code in (401, 403):
            raise Unreadable(f"{response.status_code} on {path}: {response.text[:300]}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def rollout_path(namespace: str, name: str) -> str:
    return f"/{ROLLOUTS_API}/namespaces/{namespace}/rollouts/{name}"


def failing_metrics(cluster: Cluster, client: httpx.Client, rollout: Mapping[str, Any]) -> str:
    """The failed, errored or inconclusive metrics of the AnalysisRuns the Rollout names, best
    effort: the verdict stands without them."""
    canary = (rollout.get("status") or {}).get("canary") or {}
    namespace = (rollout.get("metadata") or {}).get("namespace", "")
    lines = []
    for key in ("currentBackgroundAnalysisRunStatus", "currentStepAnalysisRunStatus"):
        run = canary.get(key) or {}
        if not run.get("name"):
            continue
        try:
            analysis = cluster.get(
                client, f"/{ROLLOUTS_API}/namespaces/{namespace}/analysisruns/{run['name']}"
            )
        except (httpx.HTTPError, Unreadable, ValueError):
            lines.append(f"AnalysisRun {run['name']}: {run.get('status')} {run.get('message', '')}")
            continue
        for metric in (analysis.get("status") or {}).get("metricResults") or []:
            if metric.get("phase") in ("Failed", "Error", "Inconclusive"):
                last = (metric.get("measurements") or [{}])[-1]
                lines.append(
                    f"AnalysisRun {run['name']} metric {metric.get('name')}: "
                    f"{metric.get('phase')} {metric.get('message', '')} "
                    f"(last value {last.get('value', '-')})".rstrip()
                )
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------


def wait(
    cluster: Cluster,
    namespace: str,
    name: str,
    *,
    timeout: float,
    poll: float = POLL_SECONDS,
    auth_grace: float = AUTH_GRACE_SECONDS,
    out: Callable[[str], None] = print,
) -> int:
    """Read the Rollout every ``poll`` seconds until a verdict or ``timeout``; print each new
    state once, and the verdict last."""
    started = time.monotonic()
    look = f"kubectl argo rollouts get rollout {name} -n {namespace}"
    last = "no answer from the API server yet"
    with cluster.client() as client:
        while True:
            patient = time.monotonic() - started < auth_grace
            code, summary = _look_once(cluster, client, namespace, name, patient=patient)
            if code is not None:
                out(summary)
                if code == EXIT_FAILED:
                    out(f"rollout-gate: see `{look}`")
                return code
            if summary != last:
                out(f"rollout-gate: {summary}")
                last = summary
            if time.monotonic() + poll > started + timeout:
                out(
                    f"rollout-gate: rollout {namespace}/{name} did not finish in {timeout:g} s; "
                    f"stuck at: {last}. Look with `{look}`"
                )
                return EXIT_TIMED_OUT
            time.sleep(poll)


def _look_once(
    cluster: Cluster, client: httpx.Client, namespace: str, name: str, *, patient: bool
) -> tuple[int | None, str]:
    """(an exit code, or None to keep waiting; what to say)."""
    subject = f"rollout-gate: rollout {namespace}/{name}"
    try:
        rollout = cluster.get(client, rollout_path(namespace, name))
    except Unreadable as error:
        if patient:
            return None, f"refused: {error}"
        return EXIT_UNREADABLE, f"{subject} cannot be read: {error}"
    except (httpx.HTTPError, ValueError) as error:
        # The API server restarting, or a 404 before its cache catches up: try again.
        return None, f"API error: {error}"
    verdict = judge(rollout)
    if verdict.state == "passed":
        return EXIT_PASSED, f"{subject} {verdict.summary}"
    if verdict.state == "failed":
        lines = [f"{subject} failed: {verdict.summary}"]
        metrics = failing_metrics(cluster, client, rollout)
        if metrics:
            lines.append(metrics)
        return EXIT_FAILED, "\n".join(lines)
    return None, verdict.summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.rollout_gate", description=__doc__)
    parser.add_argument("--namespace", help="default: the pod's own namespace")
    parser.add_argument("--rollout", required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds")
    parser.add_argument(
        "--auth-grace",
        type=float,
        default=AUTH_GRACE_SECONDS,
        help="seconds a 401/403 is retried before the gate gives up",
    )
    parser.add_argument("--api-server", default=API_SERVER)
    parser.add_argument("--service-account-dir", type=Path, default=SERVICE_ACCOUNT_DIR)
    args = parser.parse_args(argv)
    cluster = Cluster(args.api_server.rstrip("/"), args.service_account_dir)
    namespace = args.namespace or (cluster.service_account_dir / "namespace").read_text().strip()
    return wait(
        cluster,
        namespace,
        args.rollout,
        timeout=args.timeout,
        poll=args.poll,
        auth_grace=args.auth_grace,
        out=lambda line: print(line, flush=True),
    )


# -- the objects that run it --------------------------------------------------------------------


def job_deadline_seconds(timeout_seconds: int) -> int:
    """The Job's activeDeadlineSeconds."""
    return timeout_seconds + DEADLINE_MARGIN_SECONDS


def await_seconds(timeout_seconds: int) -> int:
    """What Pulumi's customTimeouts (create and update) on the Job should be."""
    return job_deadline_seconds(timeout_seconds) + AWAIT_MARGIN_SECONDS


def _job_name(fingerprint: pulumi.Input[str]) -> pulumi.Input[str]:
    if isinstance(fingerprint, str):
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError(f"fingerprint must be 1-40 of [a-z0-9]: {fingerprint!r}")
        return f"{GATE_NAME}-{fingerprint}"
    # Only a Pulumi caller passes an Output; the in-cluster half never reaches this import.
    import pulumi

    return pulumi.Output.concat(f"{GATE_NAME}-", fingerprint)


def gate_objects(
    *,
    namespace: str,
    rollout_name: str,
    image: pulumi.Input[str],
    labels: Mapping[str, str],
    timeout_seconds: int,
    fingerprint: pulumi.Input[str],
    api_server_cidrs: Sequence[pulumi.Input[str]],
) -> list[dict[str, Any]]:
    """The manifests that gate `pulumi up` on the Rollout ``rollout_name`` in ``namespace``
    (keyword arguments only).

    - ``image``: the digest-pinned app image (it holds ``infra/``; the Rollout's own image).
    - ``labels``: the labels every object carries (``kube.labels(project)``); the gate adds
      ``app.kubernetes.io/component: rollout-gate`` and selects its pod by that and
      ``app.kubernetes.io/instance``.
    - ``timeout_seconds``: how long the gate waits (the Rollout's pauses plus allowances:
      ``infra.rollout.rollout_timeout_seconds``). The Job's deadline is ``job_deadline_seconds``;
      give the Job ``customTimeouts`` of ``await_seconds(timeout_seconds)``.
    - ``fingerprint``: 1-40 of ``[a-z0-9]``, str or Output; changes whenever the Rollout's spec
      does, so that each update runs a new Job ``record-rollout-gate-<fingerprint>`` (a Job's
      pod template is immutable, and Pulumi awaits a Job only when it creates it).
    - ``api_server_cidrs``: where the gate's packets to ``kubernetes.default.svc`` may be
      addressed: the Service's ClusterIP range (the cluster's service CIDR: a network-policy
      engine that filters before kube-proxy's DNAT, as the VPC CNI's eBPF agent may, sees
      that address) and the endpoints' (EKS: the control plane's ENIs in the cluster's
      subnets, so the VPC CIDR). Egress is allowed there on 443, and to the cluster's DNS.

    Returns, in creation order: ServiceAccount, Role, RoleBinding, NetworkPolicy, Job. Apply
    them with the same options as the Rollout, the Job with ``depends_on`` the Rollout and the
    others, so that it starts only after the Rollout's update has been applied.
    """
    if not api_server_cidrs:
        raise ValueError("api_server_cidrs: the gate must reach the API server somewhere")
    if "app.kubernetes.io/instance" not in labels:
        raise ValueError("labels need app.kubernetes.io/instance to select the gate's pod")
    gate_labels = {**labels, "app.kubernetes.io/component": GATE_COMPONENT}
    selector = {
        "app.kubernetes.io/instance": labels["app.kubernetes.io/instance"],
        "app.kubernetes.io/component": GATE_COMPONENT,
    }

    def meta(name: pulumi.Input[str]) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(gate_labels)}

    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(GATE_NAME),
        # Not mounted by default: the gate's pod projects its token itself (_pod_spec).
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(GATE_NAME),
        "rules": [
            {
                "apiGroups": ["argoproj.io"],
                "resources": ["rollouts", "analysisruns"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(GATE_NAME),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATE_NAME},
        "subjects": [{"kind": "ServiceAccount", "name": GATE_NAME, "namespace": namespace}],
    }
    network_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(GATE_NAME),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": cidr}} for cidr in api_server_cidrs],
                    "ports": [{"protocol": "TCP", "port": 443}],
                },
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(_job_name(fingerprint)),
        "spec": {
            # One verdict per update: a retry would only read the same Rollout again.
            "backoffLimit": 0,
            "activeDeadlineSeconds": job_deadline_seconds(timeout_seconds),
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "template": {
                "metadata": {"labels": dict(gate_labels)},
                "spec": _pod_spec(namespace, rollout_name, image, timeout_seconds),
            },
        },
    }
    return [service_account, role, binding, network_policy, job]


def _pod_spec(
    namespace: str, rollout_name: str, image: pulumi.Input[str], timeout_seconds: int
) -> dict[str, Any]:
    """Hardened as infra/pods.py's ``Pods.container`` and ``Pods.pod``: non-root, read-only root,
    no capabilities, RuntimeDefault seccomp."""
    container = {
        "name": "rollout-gate",
        "image": image,
        "imagePullPolicy": "Always",
        "command": [
            "python",
            "-m",
            "infra.rollout_gate",
            "--namespace",
            namespace,
            "--rollout",
            rollout_name,
            "--timeout",
            str(timeout_seconds),
        ],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
            {
                "name": "kube-api-access",
                "mountPath": str(SERVICE_ACCOUNT_DIR),
                "readOnly": True,
            },
        ],
    }
    return {
        "serviceAccountName": GATE_NAME,
        # The one pod that talks to the Kubernetes API projects the token, the cluster's CA and
        # its namespace where automounting would put them, the same three sources, but only here
        # and with a lifetime of our choosing.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
            {
                "name": "kube-api-access",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                            }
                        },
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                    }
                                ]
                            }
                        },
                    ]
                },
            },
        ],
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
