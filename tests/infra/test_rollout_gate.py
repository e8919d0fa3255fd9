"""The rollout gate (#12, defect 8) waits for the generation `pulumi up` just applied.

The real command runs in a subprocess against a fake Kubernetes API on loopback (TLS with a
CA of the test's own, a bearer token) that answers with a sequence of Rollout states, the last
repeated. Its objects pass the Kubernetes schemas strictly and checkov.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infra import rollout_gate
from infra.plan import REPO_ROOT
from infra.rollout_gate import (
    EXIT_FAILED,
    EXIT_PASSED,
    EXIT_TIMED_OUT,
    EXIT_UNREADABLE,
    gate_objects,
    judge,
)
from tests.infra.test_validators import K8S_VERSION

NAMESPACE = "record-staging"
ROLLOUT = "record-api"
TOKEN = "projected-token"  # the fake API's own
OLD, NEW = "5c8e7a1f2", "6d4f8b9c7"
ANALYSIS_RUN = f"record-api-{NEW}-4"
ABORT_MESSAGE = (
    'RolloutAborted: Rollout aborted update to revision 4: Metric "success-rate" assessed '
    "Failed due to failed (1) > failureLimit (0)"
)
IMAGE = "registry.example/record@sha256:" + "a" * 64
LABELS = {
    "app.kubernetes.io/name": "record",
    "app.kubernetes.io/instance": "record-staging",
    "app.kubernetes.io/part-of": "record",
    "app.kubernetes.io/managed-by": "pulumi",
}


def rollout(
    generation: int,
    observed: str | None,
    phase: str,
    *,
    stable: str = NEW,
    current: str = NEW,
    message: str = "",
    **status: Any,
) -> dict[str, Any]:
    """A Rollout as Argo writes it: observedGeneration a string."""
    body: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "stableRS": stable,
        "currentPodHash": current,
        **status,
    }
    if observed is not None:
        body["observedGeneration"] = observed
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": ROLLOUT, "namespace": NAMESPACE, "generation": generation},
        "status": body,
    }


# What the apply returns on an update to generation 4: the previous revision's verdict.
STALE_HEALTHY = rollout(4, "3", "Healthy", stable=OLD, current=OLD)
PROGRESSING = rollout(
    4,
    "4",
    "Progressing",
    stable=OLD,
    message="more replicas need to be updated",
    currentStepIndex=1,
)
HEALTHY = rollout(4, "4", "Healthy", currentStepIndex=6)
PAUSED = rollout(
    4,
    "4",
    "Paused",
    stable=OLD,
    message="CanaryPauseStep",
    currentStepIndex=1,
    pauseConditions=[{"reason": "CanaryPauseStep", "startTime": "2026-12-04T00:00:00Z"}],
    controllerPause=True,
)
ABORTED = rollout(
    4,
    "4",
    "Degraded",
    stable=OLD,
    message=ABORT_MESSAGE,
    abort=True,
    canary={
        "currentBackgroundAnalysisRunStatus": {
            "name": ANALYSIS_RUN,
            "status": "Failed",
            "message": 'Metric "success-rate" assessed Failed',
        }
    },
)
ANALYSIS = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "AnalysisRun",
    "metadata": {"name": ANALYSIS_RUN, "namespace": NAMESPACE},
    "status": {
        "phase": "Failed",
        "metricResults": [
            {
                "name": "success-rate",
                "phase": "Failed",
                "message": "",
                "measurements": [{"phase": "Failed", "value": "[0.93]"}],
            }
        ],
    },
}


# -- a fake Kubernetes API ---------------------------------------------------------------------


@dataclass
class FakeApi:
    states: list[dict[str, Any]] = field(default_factory=list)
    served: int = 0
    forbidden: bool = False
    # Refuse this many requests first, as an API server whose RBAC cache trails a new binding.
    forbidden_for: int = 0
    paths: list[str] = field(default_factory=list)

    def answer(self, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
        self.paths.append(path)
        if token != f"Bearer {TOKEN}":
            return 401, {"kind": "Status", "reason": "Unauthorized"}
        if self.forbidden or len(self.paths) <= self.forbidden_for:
            return 403, {"kind": "Status", "reason": "Forbidden"}
        prefix = f"/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}"
        if path == f"{prefix}/rollouts/{ROLLOUT}":
            state = self.states[min(self.served, len(self.states) - 1)]
            self.served += 1
            return 200, state
        if path == f"{prefix}/analysisruns/{ANALYSIS_RUN}":
            return 200, ANALYSIS
        return 404, {"kind": "Status", "reason": "NotFound"}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Cluster:
    api: FakeApi
    url: str
    service_account_dir: Path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    api = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            status, body = api.answer(self.path, self.headers.get("Authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # What the kubelet projects into the gate's pod: the token, the cluster's CA, the namespace.
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN + "\n")
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    (sa / "namespace").write_text(NAMESPACE)
    try:
        yield Cluster(api, f"https://127.0.0.1:{server.server_address[1]}", sa)
    finally:
        server.shutdown()
        server.server_close()


def run_gate(
    cluster: Cluster, timeout: float = 10, auth_grace: float = 5
) -> subprocess.CompletedProcess[str]:
    """``python -m infra.rollout_gate`` as the Job runs it, but against the fake API; the
    namespace comes from the projected file, as when --namespace is left out."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.rollout_gate",
            "--rollout",
            ROLLOUT,
            "--timeout",
            str(timeout),
            "--poll",
            "0.05",
            "--auth-grace",
            str(auth_grace),
            "--api-server",
            cluster.url,
            "--service-account-dir",
            str(cluster.service_account_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )


# -- the command -------------------------------------------------------------------------------


def test_a_stale_healthy_status_does_not_pass_the_gate(cluster: Cluster) -> None:
    # The provider's pulumi.com/waitFor "jsonpath={.status.phase}=Healthy" is met by the object
    # the apply returned: its status is still the previous revision's.
    assert STALE_HEALTHY["status"]["phase"] == "Healthy"
    cluster.api.states = [STALE_HEALTHY, PROGRESSING, PROGRESSING, HEALTHY]

    result = run_gate(cluster)

    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    # It read past the stale answer and the progress, and stopped at the first new Healthy.
    assert cluster.api.served == 4
    lines = result.stdout.splitlines()
    assert "generation 4, observed 3" in lines[0]
    assert "Progressing" in lines[1]
    assert lines[-1] == (
        f"rollout-gate: rollout {NAMESPACE}/{ROLLOUT} Healthy at generation 4: "
        f"pod hash {NEW} is stable"
    )


def test_an_aborted_canary_fails_with_argos_message_and_the_failing_metric(
    cluster: Cluster,
) -> None:
    cluster.api.states = [STALE_HEALTHY, PROGRESSING, ABORTED]

    result = run_gate(cluster)

    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert cluster.api.served == 3
    assert ABORT_MESSAGE in result.stdout
    assert f"AnalysisRun {ANALYSIS_RUN} metric success-rate: Failed" in result.stdout
    assert "[0.93]" in result.stdout
    assert f"kubectl argo rollouts get rollout {ROLLOUT} -n {NAMESPACE}" in result.stdout


def test_a_degraded_status_of_the_previous_generation_does_not_fail_the_gate(
    cluster: Cluster,
) -> None:
    # The last deploy was aborted; this one, generation 5, fixes it.
    stale_abort = {**ABORTED, "metadata": {**ABORTED["metadata"], "generation": 5}}
    fixed = rollout(5, "5", "Healthy")
    cluster.api.states = [stale_abort, fixed]

    result = run_gate(cluster)

    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    assert cluster.api.served == 2


def test_an_invalid_spec_fails_the_gate(cluster: Cluster) -> None:
    invalid = rollout(
        4,
        "4",
        "Degraded",
        stable=OLD,
        conditions=[
            {
                "type": "InvalidSpec",
                "status": "True",
                "reason": "InvalidSpec",
                "message": 'The Rollout "record-api" is invalid: spec.strategy.canary.steps',
            }
        ],
    )
    cluster.api.states = [STALE_HEALTHY, invalid]

    result = run_gate(cluster)

    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert "InvalidSpec: The Rollout" in result.stdout


def test_a_rollout_stuck_in_a_pause_times_out_saying_where(cluster: Cluster) -> None:
    cluster.api.states = [STALE_HEALTHY, PAUSED]

    result = run_gate(cluster, timeout=1)

    assert result.returncode == EXIT_TIMED_OUT, result.stdout + result.stderr
    assert cluster.api.served > 2
    last = result.stdout.splitlines()[-1]
    assert "did not finish in 1 s" in last
    assert "phase Paused" in last
    assert "CanaryPauseStep" in last
    assert f"stable {OLD} vs current {NEW}, step 1" in last
    assert f"kubectl argo rollouts get rollout {ROLLOUT} -n {NAMESPACE}" in last


def test_a_controller_that_never_observes_the_update_times_out(cluster: Cluster) -> None:
    cluster.api.states = [STALE_HEALTHY]

    result = run_gate(cluster, timeout=0.5)

    assert result.returncode == EXIT_TIMED_OUT, result.stdout + result.stderr
    assert "generation 4, observed 3" in result.stdout.splitlines()[-1]


def test_a_gate_without_read_access_fails_before_its_timeout(cluster: Cluster) -> None:
    cluster.api.forbidden = True

    result = run_gate(cluster, timeout=30, auth_grace=0.3)

    assert result.returncode == EXIT_UNREADABLE, result.stdout + result.stderr
    assert "403" in result.stdout
    rollout_path = f"/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}/rollouts/{ROLLOUT}"
    assert set(cluster.api.paths) == {rollout_path}
    assert len(cluster.api.paths) < 30


def test_a_role_binding_not_yet_in_effect_is_waited_for(cluster: Cluster) -> None:
    cluster.api.forbidden_for = 3
    cluster.api.states = [HEALTHY]

    result = run_gate(cluster)

    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    assert "refused: 403" in result.stdout


# -- the verdict on one state -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generation", "observed", "state"),
    [
        (10, "10", "passed"),
        # Compared as strings, whole: "1" is not a prefix match of 10, nor 10 of "100".
        (10, "1", "waiting"),
        (10, "100", "waiting"),
        (10, None, "waiting"),
        # A controller that writes a number is read the same way.
        (10, 10, "passed"),
    ],
)
def test_observed_generation_is_argos_string(generation: int, observed: Any, state: str) -> None:
    body = rollout(generation, None, "Healthy")
    if observed is not None:
        body["status"]["observedGeneration"] = observed
    assert judge(body).state == state


def test_healthy_is_not_done_until_the_new_pods_are_the_stable_set() -> None:
    # IsFullyPromoted / RolloutCompleted: stableRS == currentPodHash, and not empty.
    assert judge(rollout(4, "4", "Healthy", stable=OLD)).state == "waiting"
    assert judge(rollout(4, "4", "Healthy", stable="", current="")).state == "waiting"
    # IsUnpausing: the pause conditions cleared, the controller not yet acting on it.
    unpausing = rollout(4, "4", "Healthy", controllerPause=True, pauseConditions=[])
    assert judge(unpausing) == rollout_gate.Verdict("waiting", "waiting for rollout to unpause")


# -- the objects that run it --------------------------------------------------------------------


def build(**overrides: Any) -> list[dict[str, Any]]:
    args: dict[str, Any] = {
        "namespace": NAMESPACE,
        "rollout_name": ROLLOUT,
        "image": IMAGE,
        "labels": LABELS,
        "timeout_seconds": 2340,
        "fingerprint": "0123456789ab",
        "api_server_cidrs": ["172.20.0.0/16", "10.0.0.0/16"],
    }
    return gate_objects(**{**args, **overrides})


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects)
    return kinds


def test_the_job_runs_the_gate_once_for_this_deploy() -> None:
    objects = build()
    assert [o["kind"] for o in objects] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "Job",
    ]
    job = by_kind(objects)["Job"]
    assert job["metadata"]["name"] == "record-rollout-gate-0123456789ab"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 2340 + rollout_gate.DEADLINE_MARGIN_SECONDS
    assert rollout_gate.await_seconds(2340) > spec["activeDeadlineSeconds"]
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == [
        "python",
        "-m",
        "infra.rollout_gate",
        "--namespace",
        NAMESPACE,
        "--rollout",
        ROLLOUT,
        "--timeout",
        "2340",
    ]
    # The token is this pod's alone, projected where the gate reads it.
    assert pod["serviceAccountName"] == "record-rollout-gate"
    assert pod["automountServiceAccountToken"] is False
    (mount,) = (m for m in container["volumeMounts"] if m["name"] == "kube-api-access")
    assert mount["mountPath"] == str(rollout_gate.SERVICE_ACCOUNT_DIR)
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    with pytest.raises(ValueError, match="fingerprint"):
        build(fingerprint="Not_A-Hash")


def test_the_role_reads_rollouts_and_analysis_runs_and_nothing_else() -> None:
    kinds = by_kind(build())
    assert kinds["Role"]["rules"] == [
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["rollouts", "analysisruns"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = kinds["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": kinds["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "record-rollout-gate", "namespace": NAMESPACE}
    ]
    assert kinds["ServiceAccount"]["automountServiceAccountToken"] is False


def test_the_network_policy_lets_only_the_gate_reach_the_api_server_and_dns() -> None:
    kinds = by_kind(build())
    policy = kinds["NetworkPolicy"]["spec"]
    pod_labels = kinds["Job"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "rollout-gate"
    assert "ingress" not in policy
    api, dns = policy["egress"]
    assert api == {
        "to": [{"ipBlock": {"cidr": "172.20.0.0/16"}}, {"ipBlock": {"cidr": "10.0.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert {p["port"] for p in dns["ports"]} == {53}


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gate")
    for index, manifest in enumerate(build()):
        (directory / f"{index}-{manifest['kind'].lower()}.yaml").write_text(
            yaml.safe_dump(manifest)
        )
    return directory


def test_the_objects_match_the_kubernetes_schemas(manifest_dir: Path, tools_bin: Path) -> None:
    files = sorted(manifest_dir.glob("*.yaml"))
    result = subprocess.run(
        [str(tools_bin / "kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = [line for line in output.splitlines() if " passed for " in line]
    assert len(passed) == len(files) == 5, output


def test_checkov_finds_nothing_to_fix_in_the_gate(manifest_dir: Path, tools_bin: Path) -> None:
    result = subprocess.run(
        [
            str(tools_bin / "checkov"),
            "--skip-download",
            "--framework",
            "kubernetes",
            "-d",
            str(manifest_dir),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = json.loads(result.stdout)["results"]
    assert [c["check_id"] for c in results["failed_checks"]] == []
    assert results["skipped_checks"] == []
    passed = {c["check_id"] for c in results["passed_checks"]}
    # Among them: read-only root (22), non-root (23), seccomp (31), capabilities (37), the
    # token mounted only where needed (38), image by digest (43).
    assert {"CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_31", "CKV_K8S_37", "CKV_K8S_38"} <= passed
