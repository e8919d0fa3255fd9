"""The local model server (``workloads.useLocalModels``): the OpenAI-protocol API in-cluster."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from infra import k8s as kube
from infra.pods import MODEL_PORT, SECRETS_AS_ENV_SKIP, Pods, child_options


@dataclass
class ModelServerArgs:
    pods: Pods
    provider: pulumi.ProviderResource
    depends_on: list[pulumi.Resource]
    # The EXTRAS=ai build: the API image has no models.
    image: pulumi.Input[str]
    # The component that parented these objects before the split (Workloads), for aliases.
    old_parent: pulumi.Resource | None = None


class ModelServer(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: ModelServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:ModelServer", name, None, opts)
        pods = args.pods
        opts_ns = child_options(self, args.provider, args.depends_on, args.old_parent)
        probe = {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2}
        container = pods.container(
            "model-server",
            # The pod's own address; NetworkPolicy admits only the API and the worker.
            ["record", "models", "serve", "--host", "0.0.0.0", "--port", str(MODEL_PORT)],  # noqa: S104
            cpu=("1", "2"),
            memory=("2Gi", "4Gi"),
            image=args.image,
            ports=[{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}],
            readinessProbe=probe,
            livenessProbe={**probe, "initialDelaySeconds": 30},
        )
        pods.apply(
            "model-server",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": pods.meta(
                    "record-model-server", "model-server", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}
                ),
                "spec": {
                    "replicas": 1,
                    "revisionHistoryLimit": 3,
                    "selector": {"matchLabels": kube.selector(pods.project, "model-server")},
                    "template": pods.pod("model-server", [container]),
                },
            },
            opts_ns,
        )
        pods.apply(
            "model-server-service",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": pods.meta("record-model-server", "model-server"),
                "spec": {
                    "type": "ClusterIP",
                    "selector": kube.selector(pods.project, "model-server"),
                    "ports": [{"name": "http", "port": MODEL_PORT, "targetPort": "http"}],
                },
            },
            opts_ns,
        )
        self.register_outputs({})
