"""The environment the stack gives the app's containers against ``app/settings.py`` (#12).

Every variable the API, the worker, the model server and the migration Job's containers get
(ConfigMap and Secret keys through ``envFrom``, ``secretKeyRef`` and plain ``env`` entries) is
a ``Settings`` field (pydantic-settings, no prefix, case-insensitive) or on ``NOT_SETTINGS``, a
short list of variables something other than ``Settings`` reads. And the reverse: every setting
production cannot run on its default reaches each container that needs it. A key renamed on
either side, or misspelt, fails here instead of falling back to a default at run time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.settings import Settings
from infra.db_bootstrap import ENV_OWNER, ENV_PASSWORDS
from infra.plan import Plan, render, stack_config
from tests.infra.conftest import STACKS, of_kind, one

SETTINGS = frozenset(name.upper() for name in Settings.model_fields)

# Read by something other than Settings, each for the reason given. Nothing else may be set.
NOT_SETTINGS = frozenset(
    {
        # infra/db_bootstrap.py (the migration Job's init container, or a preview's provisioner
        # Job in the base namespace), before `record` runs.
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_MASTER_SECRET_ARN",
        ENV_OWNER,
        *ENV_PASSWORDS.values(),
        # A preview's provisioner Jobs: the bootstrap's preview mode (record_pr_<n> only).
        "DB_PREVIEW_NUMBER",
        # libpq (psycopg) and the bootstrap: the RDS CA bundle for sslmode=verify-full.
        "PGSSLROOTCERT",
        # huggingface_hub: the image carries the models; never download at run time.
        "HF_HUB_OFFLINE",
        # The model server (app/ai/server.py) reads its bearer key before any Settings exist.
        "MODEL_SERVER_API_KEY",
    }
)
# Whole families read by libraries: the OpenTelemetry SDK and CPython. (AWS_* is not one:
# boto3's come from the IRSA webhook, and AWS_REGION is a setting.) KEDA's own settings are
# in its TriggerAuthentication and ScaledObject, never in a container's environment.
NOT_SETTINGS_PREFIXES = ("OTEL_", "PYTHON")

# workload name prefix, container name -> the settings it cannot do without in production.
_APP = {"ENVIRONMENT", "DATABASE_URL", "REDIS_URL", "PUBLIC_URL", "MAIL_BACKEND", "MAIL_FROM"}
_STORAGE = {"STORAGE_BACKEND", "S3_BUCKET", "S3_PREFIX", "S3_KMS_KEY_ID", "AWS_REGION"}
_BOOTSTRAP = {
    "AWS_REGION",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_MASTER_SECRET_ARN",
    ENV_OWNER,
    *ENV_PASSWORDS.values(),
}
REQUIRED = {
    ("record-api", "api"): _APP
    | _STORAGE
    | {"OPENAI_API_KEY", "TRUSTED_PROXIES", "CORS_ORIGINS", "BIND", "PROMETHEUS_MULTIPROC_DIR"},
    ("record-worker", "worker"): _APP
    | _STORAGE
    | {"OPENAI_API_KEY", "SMTP_HOST", "SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD"},
    ("record-migrate-", "migrate"): {"ENVIRONMENT", "DATABASE_URL"},
    ("record-migrate-", "db-bootstrap"): _BOOTSTRAP,
    # A preview's (infra/provisioner.py): the same program, in the base namespace.
    ("record-db-provision-", "db-provisioner"): _BOOTSTRAP,
    ("record-model-server", "model-server"): {"MODEL_SERVER_API_KEY"},
}
# Only where the stack configures them.
OPTIONAL_IN_CONFIG_MAP = ("OIDC_ISSUER", "OIDC_JWKS_URL", "OIDC_AUDIENCE")


def _keys(manifest: dict[str, Any]) -> set[str]:
    return set(manifest.get("data") or {}) | set(manifest.get("stringData") or {})


def container_env(plan: Plan) -> dict[tuple[str, str], set[str]]:
    """(workload, container) -> every variable name it gets, for the app's workloads."""
    sources = {
        kind: {m["metadata"]["name"]: _keys(m) for m in of_kind(plan, kind)}
        for kind in ("ConfigMap", "Secret")
    }
    out: dict[tuple[str, str], set[str]] = {}
    for manifest in plan.manifests:
        if manifest["kind"] not in {"Deployment", "Job", "Rollout"}:
            continue
        workload = manifest["metadata"]["name"]
        if not workload.startswith("record-"):
            continue
        spec = manifest["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            names: set[str] = set()
            for source in container.get("envFrom", []):
                kind, ref = (
                    ("ConfigMap", source["configMapRef"])
                    if "configMapRef" in source
                    else ("Secret", source["secretRef"])
                )
                assert ref["name"] in sources[kind], f"{workload}: no {kind} {ref['name']}"
                names |= {source.get("prefix", "") + key for key in sources[kind][ref["name"]]}
            for entry in container.get("env", []):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or (
                    entry.get("valueFrom") or {}
                ).get("configMapKeyRef")
                if ref is not None:
                    kind = "Secret" if "secretKeyRef" in entry["valueFrom"] else "ConfigMap"
                    assert ref["key"] in sources[kind].get(ref["name"], set()), (
                        f"{workload}/{container['name']}: {entry['name']} refers to "
                        f"{kind} {ref['name']} key {ref['key']}, which it does not set"
                    )
                names.add(entry["name"])
            out[(workload, container["name"])] = names
    return out


def _unread(names: set[str]) -> set[str]:
    return {
        name
        for name in names
        if name.upper() not in SETTINGS
        and name not in NOT_SETTINGS
        and not name.startswith(NOT_SETTINGS_PREFIXES)
    }


def _with_oidc() -> Plan:
    """staging with the optional OIDC settings on, so that their keys are checked too."""
    config, _ = stack_config("staging")
    workloads = json.loads(config["record:workloads"])
    workloads |= {
        "oidcIssuer": "https://idp.example.com/",
        "oidcJwksUrl": "https://idp.example.com/.well-known/jwks.json",
        "oidcAudience": "record",
    }
    return render("staging", {"record:workloads": workloads})


@pytest.fixture(scope="module")
def oidc_plan(plans: dict[str, Plan]) -> Plan:
    # After the session's renders (render is not re-entrant).
    return _with_oidc()


def test_allowlist_does_not_shadow_a_setting() -> None:
    # A setting on the allowlist would hide a misspelling of it.
    assert not NOT_SETTINGS & SETTINGS
    assert not {s for s in SETTINGS if s.startswith(NOT_SETTINGS_PREFIXES)} - {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
    }


@pytest.mark.parametrize("stack", STACKS)
def test_every_variable_the_containers_get_is_read(plans: dict[str, Plan], stack: str) -> None:
    env = container_env(plans[stack])
    bootstrap = "db-provisioner" if stack == "preview" else "db-bootstrap"
    assert {container for _, container in env} >= {"api", "worker", "migrate", bootstrap}
    unread = {f"{w}/{c}": sorted(_unread(names)) for (w, c), names in env.items()}
    assert not {k: v for k, v in unread.items() if v}, (
        "not a field of app/settings.py Settings, nor on NOT_SETTINGS (misspelt or renamed?)"
    )


def test_optional_oidc_keys_are_settings(oidc_plan: Plan) -> None:
    config_map = one(
        m for m in of_kind(oidc_plan, "ConfigMap") if m["metadata"]["name"] == "record-config"
    )
    assert set(OPTIONAL_IN_CONFIG_MAP) <= set(config_map["data"])
    for (workload, container), names in container_env(oidc_plan).items():
        assert not _unread(names), f"{workload}/{container}: {sorted(_unread(names))}"


@pytest.mark.parametrize("stack", STACKS)
def test_each_container_gets_the_settings_it_needs(plans: dict[str, Plan], stack: str) -> None:
    env = container_env(plans[stack])
    seen = set()
    for (workload, container), names in env.items():
        for (prefix, name), required in REQUIRED.items():
            if container == name and workload.startswith(prefix):
                seen.add((prefix, name))
                missing = required - names
                assert not missing, f"{stack}: {workload}/{container} lacks {sorted(missing)}"
    # A base stack bootstraps in its migration Job; a preview in the base's provisioner Job.
    absent = {"model-server", "db-bootstrap" if stack == "preview" else "db-provisioner"}
    expected = {key for key in REQUIRED if key[1] not in absent}
    assert expected <= seen, f"{stack}: no {sorted(expected - seen)}"


def test_only_the_worker_gets_smtp_credentials(plans: dict[str, Plan]) -> None:
    for stack in STACKS:
        for (workload, container), names in container_env(plans[stack]).items():
            if container != "worker":
                assert not names & {"SMTP_USERNAME", "SMTP_PASSWORD"}, f"{stack}: {workload}"
