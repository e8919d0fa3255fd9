"""The alertmanager.yml the Prometheus operator writes for a stack: the base configuration
kube-prometheus-stack ships, with the stack's AlertmanagerConfig objects merged in.

A Python port of prometheus-operator v0.83.0 (the operator kube-prometheus-stack 75.15.1
installs), ``pkg/alertmanager/amcfg.go``: ``AddAlertmanagerConfigs``, ``convertRoute``,
``convertInhibitRule``, ``convertSnsConfig``, ``convertWebhookConfig`` and the enforcers
(``namespaceEnforcer`` for OnNamespace, ``noopEnforcer`` for None, both wrapped in
``continueToNextRoute``). Only the fields Record's objects use are ported; anything else
fails loudly rather than being dropped.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

# Operator version the ported code comes from, and the chart version that installs it.
OPERATOR_VERSION = "v0.83.0"
CHART_VERSION = "75.15.1"

# kube-prometheus-stack 75.15.1 values.yaml, ``alertmanager.config`` (the chart writes it to
# the alertmanager-kube-prometheus-stack-alertmanager Secret when values do not override it).
CHART_BASE_CONFIG = yaml.safe_load(
    """
global:
  resolve_timeout: 5m
inhibit_rules:
  - source_matchers:
      - 'severity = critical'
    target_matchers:
      - 'severity =~ warning|info'
    equal:
      - 'namespace'
      - 'alertname'
  - source_matchers:
      - 'severity = warning'
    target_matchers:
      - 'severity = info'
    equal:
      - 'namespace'
      - 'alertname'
  - source_matchers:
      - 'alertname = InfoInhibitor'
    target_matchers:
      - 'severity = info'
    equal:
      - 'namespace'
  - target_matchers:
      - 'alertname = InfoInhibitor'
route:
  group_by: ['namespace']
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 12h
  receiver: 'null'
  routes:
  - receiver: 'null'
    matchers:
      - alertname = "Watchdog"
receivers:
- name: 'null'
templates:
- '/etc/alertmanager/config/*.tmpl'
"""
)

_ROUTE_FIELDS = {
    "receiver",
    "groupBy",
    "groupWait",
    "groupInterval",
    "repeatInterval",
    "continue",
    "matchers",
    "routes",
}
_RECEIVER_FIELDS = {"name", "snsConfigs", "webhookConfigs"}


def _escape(value: str) -> str:
    # openMetricsEscape: backslash, newline and double quote.
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _matcher_string(matcher: dict[str, Any], match_type: str | None = None) -> str:
    """``Matcher.String()``: name, operator, quoted value, no spaces."""
    operator = match_type or matcher["matchType"]
    return f'{matcher["name"]}{operator}"{_escape(matcher.get("value", ""))}"'


def _namespaced(name: str, namespace: str, cr_name: str) -> str:
    return f"{namespace}/{cr_name}/{name}" if name else ""


def _route(spec: dict[str, Any], namespace: str, cr_name: str) -> dict[str, Any]:
    unknown = set(spec) - _ROUTE_FIELDS
    assert not unknown, f"route fields not ported: {unknown}"
    matchers: list[str] = []
    match: dict[str, str] = {}
    match_re: dict[str, str] = {}
    for matcher in spec.get("matchers", []):
        if matcher.get("matchType"):
            matchers.append(_matcher_string(matcher))
        elif matcher.get("regex"):
            match_re[matcher["name"]] = matcher.get("value", "")
        else:
            match[matcher["name"]] = matcher.get("value", "")
    out: dict[str, Any] = {"receiver": _namespaced(spec.get("receiver", ""), namespace, cr_name)}
    for source, target in (
        ("groupBy", "group_by"),
        ("groupWait", "group_wait"),
        ("groupInterval", "group_interval"),
        ("repeatInterval", "repeat_interval"),
    ):
        if spec.get(source):
            out[target] = spec[source]
    if spec.get("continue"):
        out["continue"] = True
    if match:
        out["match"] = match
    if match_re:
        out["match_re"] = match_re
    if matchers:
        out["matchers"] = matchers
    if spec.get("routes"):
        out["routes"] = [_route(child, namespace, cr_name) for child in spec["routes"]]
    return out


def _inhibit_rule(spec: dict[str, Any]) -> dict[str, Any]:
    # Alertmanager >= 0.22: every matcher becomes a v2 matcher string.
    def side(matchers: list[dict[str, Any]]) -> list[str]:
        return [
            _matcher_string(m, m.get("matchType") or ("=~" if m.get("regex") else "="))
            for m in matchers
        ]

    out: dict[str, Any] = {
        "source_matchers": side(spec.get("sourceMatch", [])),
        "target_matchers": side(spec.get("targetMatch", [])),
    }
    if spec.get("equal"):
        out["equal"] = list(spec["equal"])
    return out


def _receiver(
    spec: dict[str, Any], namespace: str, cr_name: str, secrets: dict[tuple[str, str], str]
) -> dict[str, Any]:
    unknown = set(spec) - _RECEIVER_FIELDS
    assert not unknown, f"receiver fields not ported: {unknown}"
    out: dict[str, Any] = {"name": _namespaced(spec["name"], namespace, cr_name)}
    if spec.get("snsConfigs"):
        out["sns_configs"] = []
        for sns in spec["snsConfigs"]:
            assert set(sns) <= {"topicARN", "sigv4", "subject", "sendResolved"}, sns
            config: dict[str, Any] = {}
            if "sendResolved" in sns:
                config["send_resolved"] = sns["sendResolved"]
            config["sigv4"] = {"region": sns["sigv4"]["region"]} if "sigv4" in sns else {}
            config["topic_arn"] = sns["topicARN"]
            if sns.get("subject"):
                config["subject"] = sns["subject"]
            out["sns_configs"].append(config)
    if spec.get("webhookConfigs"):
        out["webhook_configs"] = []
        for hook in spec["webhookConfigs"]:
            assert set(hook) <= {"urlSecret", "url", "sendResolved"}, hook
            url = (
                secrets[(hook["urlSecret"]["name"], hook["urlSecret"]["key"])]
                if "urlSecret" in hook
                else hook["url"]
            )
            config = {"url": url}
            if "sendResolved" in hook:
                config["send_resolved"] = hook["sendResolved"]
            out["webhook_configs"].append(config)
    return out


def effective_config(
    base: dict[str, Any],
    alertmanager_configs: list[dict[str, Any]],
    matcher_strategy: str,
    secrets: dict[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """``base`` with the AlertmanagerConfig objects merged in, as the operator does it.

    ``secrets`` maps (Secret name, key) in the objects' namespace to the value the operator
    would read (webhook URLs)."""
    assert matcher_strategy in {"None", "OnNamespace"}, matcher_strategy
    cfg = copy.deepcopy(base)
    cfg.setdefault("inhibit_rules", [])
    cfg.setdefault("receivers", [])
    sub_routes: list[dict[str, Any]] = []
    by_key = {
        f"{c['metadata']['namespace']}/{c['metadata']['name']}": c for c in alertmanager_configs
    }
    for key in sorted(by_key):
        cr = by_key[key]
        namespace, cr_name = cr["metadata"]["namespace"], cr["metadata"]["name"]
        spec = cr["spec"]
        assert set(spec) <= {"route", "receivers", "inhibitRules"}, set(spec)
        namespace_matcher = f'namespace="{_escape(namespace)}"'
        for rule_spec in spec.get("inhibitRules", []):
            rule = _inhibit_rule(rule_spec)
            if matcher_strategy == "OnNamespace":
                for side in ("source_matchers", "target_matchers"):
                    if namespace_matcher not in rule[side]:
                        rule[side].append(namespace_matcher)
            cfg["inhibit_rules"].append({k: v for k, v in rule.items() if v})
        if not spec.get("route"):
            continue
        route = _route(spec["route"], namespace, cr_name)
        if matcher_strategy == "OnNamespace":
            route["matchers"] = [*route.get("matchers", []), namespace_matcher]
        route["continue"] = True
        sub_routes.append(route)
        for receiver in spec.get("receivers", []):
            cfg["receivers"].append(_receiver(receiver, namespace, cr_name, secrets or {}))
    # The objects' routes come first; all "continue", so the base routes still see every alert.
    cfg["route"]["routes"] = [*sub_routes, *cfg["route"].get("routes", [])]
    return cfg
