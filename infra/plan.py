"""Offline render of a stack: the program run under Pulumi mocks, no cloud, no CLI.

``render(stack)`` returns every resource the program declares (type, name, inputs) and every
Kubernetes object as a manifest. Values a cloud would assign at deploy time (ids, ARNs,
endpoints) are placeholders that contain ``offline-placeholder`` or account 000000000000, so
nobody mistakes a plan for a deployment. Secret values never reach the output: each renders as
``[secret]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = "record"
ACCOUNT = "000000000000"
PLACEHOLDER = "offline-placeholder"
SECRET = "[secret]"
_SECRET_SIG = "4dabf18193072939515e22adb298388d"
# Secrets an operator sets with `pulumi config set --secret`; never in a stack file.
OPERATOR_SECRETS = (
    "dbAppPassword",
    "cacheAuthToken",
    "openaiApiKey",
    "modelServerApiKey",
    "kubeconfig",
)
OFFLINE_NOTE = (
    "Offline render (Pulumi mocks): no cloud was contacted. Values containing "
    f"'{PLACEHOLDER}' or account {ACCOUNT} are assigned by AWS at deploy time; "
    f"secrets render as '{SECRET}'."
)


class PlanError(RuntimeError):
    pass


@dataclass
class Plan:
    stack: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def manifests(self) -> list[dict[str, Any]]:
        """Every Kubernetes object (Helm releases excluded: they are charts, not objects)."""
        return [
            r["inputs"]
            for r in self.resources
            if r["type"].startswith("kubernetes:")
            and not r["type"].startswith("kubernetes:helm.sh")
            and "kind" in r["inputs"]
        ]

    def of_type(self, type_token: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == type_token]


def stack_config(stack: str) -> tuple[dict[str, str], list[str]]:
    """The stack file's config as Pulumi passes it to a program: JSON strings, secret keys."""
    path = REPO_ROOT / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise PlanError(f"no stack file {path.name}; stacks: {', '.join(available_stacks())}")
    raw = yaml.safe_load(path.read_text()) or {}
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, raw_value in (raw.get("config") or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        value = raw_value
        if isinstance(raw_value, dict) and set(raw_value) == {"secure"}:
            # Encrypted with the stack's secrets provider; offline there is no key to open it.
            value = f"{PLACEHOLDER}-secret-{full_key.split(':', 1)[1]}"
            secret_keys.append(full_key)
        config[full_key] = value if isinstance(value, str) else json.dumps(value)
    for key in OPERATOR_SECRETS:
        full_key = f"{PROJECT}:{key}"
        if full_key not in config:
            config[full_key] = f"{PLACEHOLDER}-secret-{key}"
            secret_keys.append(full_key)
    return config, secret_keys


def available_stacks() -> list[str]:
    return sorted(p.name.split(".")[1] for p in REPO_ROOT.glob("Pulumi.*.yaml"))


def _clean(value: Any) -> Any:
    """Mock inputs as plain JSON: secrets masked, whole floats back to ints."""
    if isinstance(value, dict):
        if _SECRET_SIG in value:
            return _mask(value.get("value"))
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _mask(value: Any) -> Any:
    """A secret keeps its shape (a Secret's stringData stays a mapping) but loses its values."""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items() if k != _SECRET_SIG}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return SECRET


def _arn(service: str, kind: str, name: str, region: str = "us-east-1") -> str:
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{kind}/{PLACEHOLDER}-{name}"


def _repository_url(repository: str, region: str) -> str:
    return f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repository}"


def offline_digest(image_resource: str) -> str:
    """The digest an offline plan says a build pushed: a hash of its resource name, hex like a
    real one (a reference must parse), in an account-000000000000 repository."""
    return "sha256:" + hashlib.sha256(f"{PLACEHOLDER}/{image_resource}".encode()).hexdigest()


def _registry_outputs(typ: str, name: str, inputs: dict[str, Any], region: str) -> dict[str, Any]:
    """ECR repositories' addresses, and what the registry answers to an image's push: the tag
    stays, the digest is the build's."""
    if typ == "aws:ecr/repository:Repository":
        return {
            "repositoryUrl": _repository_url(inputs.get("name", name), region),
            "registryId": ACCOUNT,
        }
    if typ == "docker-build:index:Image":
        digest = offline_digest(name)
        return {"digest": digest, "ref": f"{inputs['tags'][0]}@{digest}"}
    return {}


def _computed(typ: str, name: str, inputs: dict[str, Any], region: str) -> dict[str, Any]:
    """Placeholder values for outputs the cloud assigns."""
    token = hashlib.sha256(f"{typ}/{name}".encode()).hexdigest()[:8]
    out: dict[str, Any] = {
        "arn": _arn(typ.split(":")[1].split("/", maxsplit=1)[0], "resource", name)
    }
    out.update(_registry_outputs(typ, name, inputs, region))
    if typ == "aws:eks/cluster:Cluster":
        out.update(
            endpoint=f"https://{PLACEHOLDER}-{token}.eks.amazonaws.com",
            certificateAuthority={"data": f"{PLACEHOLDER}-ca"},
            identities=[
                {"oidcs": [{"issuer": f"https://oidc.eks.amazonaws.com/id/{PLACEHOLDER}-{token}"}]}
            ],
            vpcConfig={
                **inputs.get("vpcConfig", {}),
                "clusterSecurityGroupId": f"sg-{PLACEHOLDER}-{token}",
            },
        )
    elif typ == "aws:rds/instance:Instance":
        out.update(
            address=f"{inputs.get('identifier', name)}.{PLACEHOLDER}.rds.amazonaws.com",
            port=5432,
            masterUserSecrets=[
                {
                    "secretArn": _arn("secretsmanager", "secret", f"rds-{name}", region),
                    "kmsKeyId": _arn("kms", "key", name, region),
                }
            ],
        )
    elif typ == "aws:elasticache/replicationGroup:ReplicationGroup":
        out.update(
            primaryEndpointAddress=f"master.{inputs.get('replicationGroupId', name)}"
            f".{PLACEHOLDER}.cache.amazonaws.com"
        )
    elif typ == "aws:s3/bucket:Bucket":
        bucket = f"{inputs.get('bucketPrefix', name)}{PLACEHOLDER}"
        out.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}")
    elif typ == "aws:iam/role:Role":
        role = inputs.get("name", name)
        out.update(arn=f"arn:aws:iam::{ACCOUNT}:role/{role}", name=role)
    elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
        out.update(latestVersion=1)
    elif typ == "aws:ses/domainIdentity:DomainIdentity":
        domain = inputs.get("domain", name)
        out.update(
            arn=f"arn:aws:ses:{region}:{ACCOUNT}:identity/{domain}",
            verificationToken=f"{PLACEHOLDER}-verification-{token}",
        )
    elif typ == "aws:ses/domainDkim:DomainDkim":
        out.update(dkimTokens=[f"{PLACEHOLDER}-dkim{i}-{token}" for i in range(1, 4)])
    elif typ == "aws:iam/user:User":
        user = inputs.get("name", name)
        out.update(arn=f"arn:aws:iam::{ACCOUNT}:user{inputs.get('path', '/')}{user}", name=user)
    elif typ == "aws:iam/accessKey:AccessKey":
        out.update(
            secret=f"{PLACEHOLDER}-access-key-secret",
            sesSmtpPasswordV4=f"{PLACEHOLDER}-smtp-password",
            createDate="1970-01-01T00:00:00Z",
        )
    elif typ == "kubernetes:networking.k8s.io/v1:Ingress":
        out = {
            "status": {
                "loadBalancer": {"ingress": [{"hostname": f"{PLACEHOLDER}.elb.amazonaws.com"}]}
            }
        }
    elif typ.startswith("kubernetes:") or typ.startswith("pulumi:"):
        out = {}
    return out


def render(stack: str, overrides: dict[str, Any] | None = None) -> Plan:
    """Runs the program for ``stack`` under mocks. Not re-entrant: one render at a time.

    ``overrides`` replaces config keys (``"record:database"`` -> a mapping) for what-if plans.
    """
    import pulumi
    from pulumi.runtime import mocks, settings
    from pulumi.runtime.config import set_all_config
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    config, secret_keys = stack_config(stack)
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value if isinstance(value, str) else json.dumps(value)
    plan = Plan(stack=stack)
    region = config.get("aws:region", "us-east-1")

    class Mocks(mocks.Mocks):
        def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            inputs = _clean(args.inputs)
            plan.resources.append({"type": args.typ, "name": args.name, "inputs": inputs})
            if args.typ == "pulumi:pulumi:StackReference":
                from infra.preview import BASE_OUTPUTS
                from infra.provisioning_access import provisioning_namespace

                outputs: dict[str, Any] = {key: f"{PLACEHOLDER}-base-{key}" for key in BASE_OUTPUTS}
                outputs["dbPort"] = 5432
                outputs["vpcCidr"] = "10.40.0.0/16"
                outputs["kubeconfig"] = "{}"
                for image in ("api", "models"):
                    outputs[f"{image}RepositoryUrl"] = _repository_url(
                        f"{PLACEHOLDER}-base/{image}", region
                    )
                # Its provisioning namespace as a base stack names it (record-<stack>-db-
                # provisioning), and its deployed API image, pinned like every image: a
                # preview's provisioner runs there with it.
                base_namespace = f"{PROJECT}-{args.name.rsplit('/', 1)[-1]}"
                outputs["dbProvisionerNamespace"] = provisioning_namespace(base_namespace)
                # The base's record:previews.certificateArn, a wildcard ACM certificate.
                outputs["previewCertificateArn"] = _arn(
                    "acm", "certificate", "preview-wildcard", region
                )
                outputs["apiImage"] = (
                    f"{outputs['apiRepositoryUrl']}@{offline_digest(f'{PLACEHOLDER}-base-api')}"
                )
                return f"{args.name}", {"name": args.name, "outputs": outputs}
            state = {**args.inputs, **_computed(args.typ, args.name, inputs, region)}
            return f"{PLACEHOLDER}-{args.name}", state

        def call(
            self, args: mocks.MockCallArgs
        ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            # (outputs, check failures): none fail.
            return self._outputs(args), []

        def _outputs(self, args: mocks.MockCallArgs) -> dict[str, Any]:
            if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {"names": [f"{region}{z}" for z in "abc"], "zoneIds": ["z1", "z2", "z3"]}
            if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
                return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:root", "userId": "x"}
            if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
                return {
                    "userName": "AWS",
                    "password": f"{PLACEHOLDER}-ecr-token",
                    "authorizationToken": f"{PLACEHOLDER}-ecr-token",
                    "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{region}.amazonaws.com",
                }
            if args.token == "aws:lb/getLoadBalancer:getLoadBalancer":
                return {
                    "arn": _arn("elasticloadbalancing", "loadbalancer", "alb", region),
                    "arnSuffix": f"app/{PLACEHOLDER}/0000000000000000",
                    "dnsName": f"{PLACEHOLDER}.elb.amazonaws.com",
                }
            return {}

    # A loop of our own, closed at the end: Pulumi would otherwise leave one open per render.
    loop = asyncio.new_event_loop()
    previous_loop = _installed_loop()
    asyncio.set_event_loop(loop)
    # The mock monitor answers on executor threads and each wants an event loop: give every
    # thread one we can close afterwards (unclosed loops are ResourceWarnings under pytest).
    thread_loops: list[asyncio.AbstractEventLoop] = []

    def thread_loop() -> None:
        thread_loops.append(asyncio.new_event_loop())
        asyncio.set_event_loop(thread_loops[-1])

    loop.set_default_executor(ThreadPoolExecutor(max_workers=4, initializer=thread_loop))

    class Monitor(mocks.MockMonitor):
        """Records what each resource waits for, how long Pulumi awaits it and whether it goes
        before its replacement comes: mocks see inputs, not dependencies or options."""

        def RegisterResource(self, request: Any) -> Any:
            options.record(request)
            return super().RegisterResource(request)  # type: ignore[no-untyped-call]  # pulumi's mock monitor has no annotations

    options = _Options()
    settings.reset_options(project=PROJECT, stack=stack)
    set_all_config(config, secret_keys)
    mock = Mocks()
    mocks.set_mocks(mock, project=PROJECT, stack=stack, preview=False, monitor=Monitor(mock))

    from infra import config as infra_config
    from infra.stack import build

    def program() -> None:
        outputs = build(infra_config.load(PROJECT, stack))
        plan.outputs.update({k: v for k, v in outputs.items() if isinstance(v, str)})

    try:
        _sync_await(run_pulumi_func(program))
    finally:
        settings.reset_options()
        set_all_config({}, [])
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        for other in thread_loops:
            other.close()
        asyncio.set_event_loop(previous_loop)
    for resource in plan.resources:
        options.annotate(resource)
    _ = pulumi  # imported for its side effect of initialising the runtime
    return plan


@dataclass
class _Options:
    """What the engine hears of each resource besides its inputs, by (type, name)."""

    depends: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    timeouts: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    delete_first: set[tuple[str, str]] = field(default_factory=set)

    def record(self, request: Any) -> None:
        key = (request.type, request.name)
        self.depends[key] = sorted({urn.rsplit("::", 1)[-1] for urn in request.dependencies})
        if request.HasField("customTimeouts"):
            self.timeouts[key] = {
                op: value
                for op in ("create", "update", "delete")
                if (value := getattr(request.customTimeouts, op))
            }
        if request.deleteBeforeReplace:
            self.delete_first.add(key)

    def annotate(self, resource: dict[str, Any]) -> None:
        key = (resource["type"], resource["name"])
        resource["dependsOn"] = self.depends.get(key, [])
        if timeouts := self.timeouts.get(key):
            resource["customTimeouts"] = timeouts
        if key in self.delete_first:
            resource["deleteBeforeReplace"] = True


def _installed_loop() -> asyncio.AbstractEventLoop | None:
    """The thread's current loop, without creating one (get_event_loop would): a caller such
    as pytest-asyncio gets back exactly what it had."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    return getattr(local, "_loop", None)


def manifest_filename(index: int, manifest: dict[str, Any]) -> str:
    meta = manifest.get("metadata", {})
    ns = meta.get("namespace", "cluster")
    return f"{index:03d}-{manifest['kind'].lower()}-{ns}-{meta.get('name', 'unnamed')}.yaml"


def write(plan: Plan, out: Path) -> tuple[Path, Path]:
    """``out/resources.json`` and ``out/manifests/*.yaml``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    resources = out / "resources.json"
    resources.write_text(json.dumps(plan.resources, indent=2, sort_keys=True) + "\n")
    (out / "PLAN.txt").write_text(
        f"stack: {plan.stack}\n{OFFLINE_NOTE}\n"
        f"resources: {len(plan.resources)}\nkubernetes objects: {len(plan.manifests)}\n"
    )
    manifests = out / "manifests"
    manifests.mkdir(exist_ok=True)
    for old in manifests.glob("*.yaml"):
        old.unlink()
    header = f"# {OFFLINE_NOTE}\n# stack: {plan.stack}\n"
    for index, manifest in enumerate(plan.manifests):
        ordered = {
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            **{k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")},
        }
        (manifests / manifest_filename(index, manifest)).write_text(
            header + yaml.safe_dump(ordered, sort_keys=False)
        )
    return resources, manifests
