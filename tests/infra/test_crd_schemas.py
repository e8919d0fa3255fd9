"""Every custom resource the stacks render matches its project's CRD, vendored at the chart
version infra/cluster.py pins, with unknown fields refused (tests/infra/crd_schema.py).

Argo's CRDs leave a Rollout's volumes and container resources open
(x-kubernetes-preserve-unknown-fields); test_validators checks the pod template as a
Deployment's with kubernetes-validate --strict, which closes them."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from infra.cluster import CHARTS
from infra.plan import Plan
from tests.infra.conftest import STACKS
from tests.infra.crd_schema import CRD_DIR, custom_resource_schema, load_crds

# (group, kind) of every custom resource Record renders, and the chart that installs its CRD.
KINDS = {
    ("argoproj.io", "Rollout"): "argo-rollouts",
    ("argoproj.io", "AnalysisTemplate"): "argo-rollouts",
    ("keda.sh", "ScaledObject"): "keda",
    ("keda.sh", "TriggerAuthentication"): "keda",
    ("monitoring.coreos.com", "ServiceMonitor"): "kube-prometheus-stack",
    ("monitoring.coreos.com", "PodMonitor"): "kube-prometheus-stack",
    ("monitoring.coreos.com", "PrometheusRule"): "kube-prometheus-stack",
    ("monitoring.coreos.com", "AlertmanagerConfig"): "kube-prometheus-stack",
}
# The version each vendored directory was copied at, for the chart version pinned: a chart's
# own CRDs (keda, kube-prometheus-stack) or its app version's (argo-rollouts 2.40.1 -> v1.8.3).
VENDORED = {
    "argo-rollouts": ("2.40.1", "argo-rollouts-v1.8.3"),
    "keda": ("2.17.2", "keda-2.17.2"),
    "kube-prometheus-stack": ("75.15.1", "kube-prometheus-stack-75.15.1"),
}


def _custom_resources(plan: Plan) -> list[dict[str, Any]]:
    groups = {group for group, _ in KINDS}
    return [m for m in plan.manifests if m["apiVersion"].split("/")[0] in groups]


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    return load_crds()


def _errors(crds: dict[tuple[str, str], dict[str, Any]], manifest: dict[str, Any]) -> list[str]:
    group, version = manifest["apiVersion"].split("/")
    schema = custom_resource_schema(crds[(group, manifest["kind"])], version)
    validator = Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    ]


def test_the_vendored_crds_are_the_pinned_charts(
    crds: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """A chart bump without a fresh copy of its CRDs fails here."""
    for chart, (version, directory) in VENDORED.items():
        assert CHARTS[chart][1] == version, (chart, CHARTS[chart][1], version)
        assert (CRD_DIR / directory).is_dir(), directory
        assert directory in (CRD_DIR / "README.md").read_text(), directory
    assert sorted(p.name for p in CRD_DIR.iterdir() if p.is_dir()) == sorted(
        d for _, d in VENDORED.values()
    )
    assert set(crds) == set(KINDS)
    for (group, kind), chart in KINDS.items():
        source = next(p for p in CRD_DIR.glob("*/*.yaml") if f"kind: {kind}\n" in p.read_text())
        assert source.parent.name == VENDORED[chart][1], (kind, source)
        assert crds[(group, kind)]["spec"]["scope"] == "Namespaced", kind
    # CEL rules would go unchecked here; none exist in these copies.
    for path in CRD_DIR.glob("*/*.yaml"):
        assert "x-kubernetes-validations" not in path.read_text(), path


@pytest.mark.parametrize("stack", STACKS)
def test_every_custom_resource_matches_its_crd(
    plans: dict[str, Plan], crds: dict[tuple[str, str], dict[str, Any]], stack: str
) -> None:
    resources = _custom_resources(plans[stack])
    assert resources
    problems = {
        f"{m['kind']}/{m['metadata']['name']}": errors
        for m in resources
        if (errors := _errors(crds, m))
    }
    assert problems == {}
    for m in resources:
        assert (m["apiVersion"].split("/")[0], m["kind"]) in KINDS, m["kind"]


def test_every_kind_is_checked_in_some_stack(plans: dict[str, Plan]) -> None:
    rendered = {
        (m["apiVersion"].split("/")[0], m["kind"])
        for stack in STACKS
        for m in _custom_resources(plans[stack])
    }
    assert rendered == set(KINDS)


def _first(plans: dict[str, Plan], kind: str) -> dict[str, Any]:
    for stack in STACKS:
        for manifest in _custom_resources(plans[stack]):
            if manifest["kind"] == kind:
                return copy.deepcopy(manifest)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "path", "misspelt"),
    [
        # A misspelt field at the top of spec, deep in a pod template, and in a rule.
        ("ScaledObject", ("spec",), "minReplicas"),
        ("Rollout", ("spec", "template", "spec", "containers", 0), "readinesProbe"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0), "label"),
        ("AnalysisTemplate", ("spec", "metrics", 0), "sucessCondition"),
        ("ServiceMonitor", ("spec", "endpoints", 0), "intervall"),
        ("AlertmanagerConfig", ("spec", "route"), "reciever"),
        ("AlertmanagerConfig", ("spec", "route", "routes", 0), "matcher"),
        ("PodMonitor", ("spec",), "podMetricEndpoint"),
        ("TriggerAuthentication", ("spec",), "secretTargetRefs"),
        ("Rollout", ("metadata",), "label"),
    ],
)
def test_a_misspelt_field_is_refused(
    plans: dict[str, Plan],
    crds: dict[tuple[str, str], dict[str, Any]],
    kind: str,
    path: tuple[str | int, ...],
    misspelt: str,
) -> None:
    manifest = _first(plans, kind)
    assert _errors(crds, manifest) == []
    node: Any = manifest
    for step in path:
        node = node[step]
    assert misspelt not in node
    node[misspelt] = copy.deepcopy(next(iter(node.values()), "x"))
    errors = _errors(crds, manifest)
    assert errors
    assert all(re.search(rf"'{misspelt}' was unexpected", e) for e in errors), errors


def test_a_wrong_type_and_a_missing_required_field_are_refused(
    plans: dict[str, Plan], crds: dict[tuple[str, str], dict[str, Any]]
) -> None:
    scaled = _first(plans, "ScaledObject")
    scaled["spec"]["maxReplicaCount"] = "ten"
    scaled["spec"]["minReplicaCount"] = 2**31
    del scaled["spec"]["scaleTargetRef"]
    errors = _errors(crds, scaled)
    assert any("'ten' is not of type 'integer'" in e for e in errors), errors
    assert any("'scaleTargetRef' is a required property" in e for e in errors), errors
    assert any(e.startswith("spec.minReplicaCount: 2147483648 is greater") for e in errors), errors
