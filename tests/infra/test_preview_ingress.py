"""A preview answers on its base stack's ALB: its Ingress joins the base's Ingress group (an
output of the base, read through the preview's StackReference) with a lower priority and the
base's wildcard certificate, and sets nothing of the ALB's own. Before, each preview named a
group of its own (its own ALB, ≈ $0.7/day) and carried a placeholder certificate, so its URL
never resolved."""

from __future__ import annotations

from typing import Any

import pytest

from infra.api import BASE_GROUP_ORDER, PREVIEW_GROUP_ORDER
from infra.config import ConfigError
from infra.plan import PLACEHOLDER, Plan, render
from infra.preview import BASE_OUTPUTS
from tests.infra.conftest import of_kind, one

GROUP = "alb.ingress.kubernetes.io/group.name"
ORDER = "alb.ingress.kubernetes.io/group.order"
CERTIFICATE = "alb.ingress.kubernetes.io/certificate-arn"
# What only the ALB's owner may say: the controller refuses a group whose Ingresses disagree.
LOAD_BALANCER_OWN = {
    "alb.ingress.kubernetes.io/load-balancer-name",
    "alb.ingress.kubernetes.io/load-balancer-attributes",
    "alb.ingress.kubernetes.io/tags",
}
# What every Ingress of a group must say alike (the listeners are the group's).
LISTENER = (
    "alb.ingress.kubernetes.io/scheme",
    "alb.ingress.kubernetes.io/listen-ports",
    "alb.ingress.kubernetes.io/ssl-redirect",
    "alb.ingress.kubernetes.io/ssl-policy",
)


def ingress(plan: Plan) -> dict[str, Any]:
    return one(of_kind(plan, "Ingress"))


def test_the_base_exports_its_group_and_the_previews_certificate(plans):
    staging = plans["staging"]
    annotations = ingress(staging)["metadata"]["annotations"]
    assert staging.outputs["ingressGroup"] == annotations[GROUP] == "record-staging"
    assert annotations[ORDER] == str(BASE_GROUP_ORDER)
    assert set(annotations) >= LOAD_BALANCER_OWN
    assert staging.outputs["previewDomain"] == "preview.record.example.com"
    assert staging.outputs["previewCertificateArn"].startswith("arn:aws:acm:")
    # Its own certificate stays its own.
    assert annotations[CERTIFICATE] != staging.outputs["previewCertificateArn"]
    # The preview reads both through its StackReference.
    assert {"ingressGroup", "previewCertificateArn"} <= set(BASE_OUTPUTS)


def test_a_preview_joins_the_base_group_after_the_base_s_rules(plans):
    preview, staging = ingress(plans["preview"]), ingress(plans["staging"])
    annotations = preview["metadata"]["annotations"]
    # The mock StackReference answers <placeholder>-base-<output> (the certificate: an ARN).
    assert annotations[GROUP] == f"{PLACEHOLDER}-base-ingressGroup"
    assert annotations[CERTIFICATE].endswith(f"certificate/{PLACEHOLDER}-preview-wildcard")
    assert int(annotations[ORDER]) == PREVIEW_GROUP_ORDER > BASE_GROUP_ORDER
    assert not LOAD_BALANCER_OWN & set(annotations)
    for key in LISTENER:
        assert annotations[key] == staging["metadata"]["annotations"][key], key
    # Its own host, under the wildcard: pr-<n>.<previews.domain>.
    [rule] = preview["spec"]["rules"]
    assert rule["host"] == "pr-0.preview.record.example.com"
    assert preview["spec"]["tls"] == [{"hosts": [rule["host"]]}]


def test_a_preview_brings_no_certificate_of_its_own():
    arn = "arn:aws:acm:eu-west-1:111111111111:certificate/00000000-0000-0000-0000-000000000009"
    with pytest.raises(ConfigError, match=r"previews\.certificateArn"):
        render("preview", {"record:certificateArn": arn})


def test_a_base_stack_needs_its_certificate():
    with pytest.raises(ConfigError, match="record:certificateArn is required"):
        render("dev", {"record:certificateArn": None})


def test_previews_config_is_checked():
    with pytest.raises(ConfigError, match="ACM certificate"):
        render("staging", {"record:previews": {"domain": "p.example.com", "certificateArn": "x"}})


def test_the_bucket_takes_browser_uploads_from_previews_too(plans: dict[str, Plan]) -> None:
    """A preview's browser uploads straight to the base's bucket (presigned), from its own host
    under the previews' domain: the bucket's CORS names that domain's wildcard, only where the
    stack has previews."""

    def origins(plan: Plan) -> list[str]:
        cors = one(plan.of_type("aws:s3/bucketCorsConfiguration:BucketCorsConfiguration"))
        return [o for rule in cors["inputs"]["corsRules"] for o in rule["allowedOrigins"]]

    staging = plans["staging"]
    domain = staging.outputs["previewDomain"]
    assert origins(staging)[-1] == f"https://*.{domain}"
    assert len(origins(staging)) == 2  # and the stack's own origin
    assert not any("*" in o for o in origins(plans["prod"]))
