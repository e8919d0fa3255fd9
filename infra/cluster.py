"""Cluster: EKS from plain ``pulumi_aws`` resources (or an existing cluster by kubeconfig), and
the controllers the workloads rely on, installed as Helm releases."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import k8s as kube
from infra.common import assume_role_policy, child, kms_key, policy, tags
from infra.config import ClusterConfig, ProjectConfig
from infra.identity import irsa_role

# The root CA of EKS's OIDC issuer (oidc.eks.<region>.amazonaws.com); IAM no longer checks it
# for that issuer but the API still requires one.
EKS_OIDC_THUMBPRINT = "9e99a48a9960b14926bb7f3b02e22da2b0ab7280"

CHARTS = {
    "aws-load-balancer-controller": ("https://aws.github.io/eks-charts", "1.13.4"),
    # metrics-server 0.8.0: the resource metrics (metrics.k8s.io) the API's CPU HPA scales on.
    "metrics-server": ("https://kubernetes-sigs.github.io/metrics-server/", "3.13.0"),
    "keda": ("https://kedacore.github.io/charts", "2.17.2"),
    "argo-rollouts": ("https://argoproj.github.io/argo-helm", "2.40.1"),
    "kube-prometheus-stack": ("https://prometheus-community.github.io/helm-charts", "75.15.1"),
}
MONITORING_NAMESPACE = "monitoring"
# Prometheus keeps 15 days on its own EBS volume; it stops at retentionSize before the volume
# fills (a full volume crash-loops it).
PROMETHEUS_VOLUME = "50Gi"
PROMETHEUS_RETENTION_SIZE = "45GB"
# docs/install/iam_policy.json at the controller version the chart above ships (v2.13.4);
# infra/vendor/README.md says where it came from.
LBC_IAM_POLICY = (
    Path(__file__).resolve().parent / "vendor" / "aws-load-balancer-controller" / "iam_policy.json"
)


@dataclass
class ClusterArgs:
    project: ProjectConfig
    cluster: ClusterConfig
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    private_subnet_ids: list[pulumi.Input[str]]
    install_argo_rollouts: bool
    alertmanager_topic_arn: pulumi.Input[str] | None = None


class Cluster(pulumi.ComponentResource):
    provider: k8s.Provider
    node_security_group_id: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    name: pulumi.Output[str]
    releases: list[k8s.helm.v3.Release]
    # The role Alertmanager publishes to the alert topic with; monitoring grants it the topic's
    # key. None when the cluster's own Prometheus (not ours) is used.
    alertmanager_role: aws.iam.Role | None = None

    def __init__(
        self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Cluster", name, None, opts)
        p, cfg = args.project, args.cluster
        prefix = p.prefix
        if cfg.mode == "existing":
            # ClusterConfig refuses mode "existing" without any of these.
            assert cfg.kubeconfig is not None
            assert cfg.node_security_group_id is not None
            assert cfg.oidc_provider_arn is not None
            assert cfg.oidc_issuer is not None
            self.kubeconfig = pulumi.Output.secret(cfg.kubeconfig)
            self.node_security_group_id = pulumi.Output.from_input(cfg.node_security_group_id)
            self.oidc_provider_arn = pulumi.Output.from_input(cfg.oidc_provider_arn)
            self.oidc_issuer = pulumi.Output.from_input(cfg.oidc_issuer)
            self.name = pulumi.Output.from_input(prefix)
            depends: list[pulumi.Resource] = []
        else:
            depends = self._build_eks(p, cfg, args)

        self.provider = k8s.Provider(
            f"{prefix}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=child(self, depends_on=depends),
        )
        self.releases = self._install_controllers(p, cfg, args)
        self.register_outputs(
            {
                "name": self.name,
                "oidc_provider_arn": self.oidc_provider_arn,
                "node_security_group_id": self.node_security_group_id,
            }
        )

    def _build_eks(
        self, p: ProjectConfig, cfg: ClusterConfig, args: ClusterArgs
    ) -> list[pulumi.Resource]:
        prefix = p.prefix
        secrets_key = kms_key(
            self, p, f"{prefix}-eks-secrets", f"{prefix} EKS secrets envelope encryption"
        )
        role = aws.iam.Role(
            f"{prefix}-eks-cluster",
            assume_role_policy=assume_role_policy("eks.amazonaws.com"),
            tags=tags(p, f"{prefix}-eks-cluster"),
            opts=child(self),
        )
        aws.iam.RolePolicyAttachment(
            f"{prefix}-eks-cluster-policy",
            role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=child(self),
        )
        log_group = aws.cloudwatch.LogGroup(
            f"{prefix}-eks-logs",
            # EKS writes to this exact name; creating it first sets retention and the tags.
            name=f"/aws/eks/{prefix}/cluster",
            retention_in_days=90,
            tags=tags(p, f"{prefix}-eks-logs"),
            opts=child(self),
        )
        # `pulumi up` installs the charts and the workloads through this endpoint: the public
        # one open to publicAccessCidrs only, or (privateOnly) the private one, reached from the
        # deploy runner this program provisions in the VPC (infra/runner.py: the cluster
        # security group admits the runner's own group alone). Nodes always use the private one.
        cluster = aws.eks.Cluster(
            f"{prefix}-eks",
            name=prefix,
            version=cfg.version,
            role_arn=role.arn,
            vpc_config={
                "subnet_ids": args.private_subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": not cfg.private_only,
                "public_access_cidrs": None if cfg.private_only else list(cfg.public_access_cidrs),
            },
            encryption_config={
                "provider": {"key_arn": secrets_key.arn},
                "resources": ["secrets"],
            },
            access_config={
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": True,
            },
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            tags=tags(p, prefix),
            opts=child(self, depends_on=[log_group]),
        )
        node_role = aws.iam.Role(
            f"{prefix}-eks-node",
            assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
            tags=tags(p, f"{prefix}-eks-node"),
            opts=child(self),
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{prefix}-eks-node-{short}",
                role=node_role.name,
                policy_arn=f"arn:aws:iam::aws:policy/{arn}",
                opts=child(self),
            )
            for short, arn in {
                "worker": "AmazonEKSWorkerNodePolicy",
                "cni": "AmazonEKS_CNI_Policy",
                "ecr": "AmazonEC2ContainerRegistryReadOnly",
            }.items()
        ]
        launch_template = aws.ec2.LaunchTemplate(
            f"{prefix}-nodes",
            # Pods use IRSA, never the node's role: a hop limit of 1 keeps IMDS out of pods.
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": 1,
            },
            block_device_mappings=[
                {
                    "device_name": "/dev/xvda",
                    "ebs": {"volume_size": 80, "volume_type": "gp3", "encrypted": "true"},
                }
            ],
            tag_specifications=[
                {"resource_type": "instance", "tags": tags(p, f"{prefix}-node")},
                {"resource_type": "volume", "tags": tags(p, f"{prefix}-node")},
            ],
            tags=tags(p, f"{prefix}-nodes"),
            opts=child(self),
        )
        size = p.size
        node_group = aws.eks.NodeGroup(
            f"{prefix}-general",
            cluster_name=cluster.name,
            node_group_name=f"{prefix}-general",
            node_role_arn=node_role.arn,
            subnet_ids=args.private_subnet_ids,
            instance_types=list(size.node_instance_types),
            ami_type="AL2023_x86_64_STANDARD",
            scaling_config={
                "min_size": size.node_min,
                "desired_size": size.node_desired,
                "max_size": size.node_max,
            },
            update_config={"max_unavailable": 1},
            # The provider takes the version as a string (the API's own type; a number was
            # coerced to one).
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id, version=launch_template.latest_version.apply(str)
            ),
            tags=tags(p, f"{prefix}-general"),
            opts=child(
                self,
                depends_on=attachments,
                # The cluster autoscaler owns the desired size once the group exists.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        issuer = cluster.identities.apply(_oidc_issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{prefix}-oidc",
            url=issuer,
            client_id_lists=["sts.amazonaws.com"],
            thumbprint_lists=[EKS_OIDC_THUMBPRINT],
            tags=tags(p, f"{prefix}-oidc"),
            opts=child(self),
        )
        ebs_csi_role = irsa_role(
            self,
            p,
            purpose="ebs-csi-driver",
            oidc_provider_arn=oidc.arn,
            oidc_issuer=issuer,
            namespace="kube-system",
            service_account="ebs-csi-controller-sa",
            managed_policy_arn="arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy",
        )
        # NetworkPolicies are enforced only when the VPC CNI runs its policy agent.
        addons = [
            aws.eks.Addon(
                f"{prefix}-vpc-cni",
                cluster_name=cluster.name,
                addon_name="vpc-cni",
                configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
                resolve_conflicts_on_update="OVERWRITE",
                tags=tags(p, f"{prefix}-vpc-cni"),
                opts=child(self),
            ),
            *(
                aws.eks.Addon(
                    f"{prefix}-{addon}",
                    cluster_name=cluster.name,
                    addon_name=addon,
                    tags=tags(p, f"{prefix}-{addon}"),
                    opts=child(self, depends_on=[node_group]),
                )
                for addon in ("coredns", "kube-proxy")
            ),
            # Provisions the EBS volumes behind the gp3 StorageClass (Prometheus's data).
            aws.eks.Addon(
                f"{prefix}-aws-ebs-csi-driver",
                cluster_name=cluster.name,
                addon_name="aws-ebs-csi-driver",
                service_account_role_arn=ebs_csi_role.arn,
                resolve_conflicts_on_update="OVERWRITE",
                tags=tags(p, f"{prefix}-aws-ebs-csi-driver"),
                opts=child(self, depends_on=[node_group]),
            ),
        ]

        self.name = cluster.name
        self.node_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.oidc_provider_arn = oidc.arn
        self.oidc_issuer = issuer
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority).apply(
                lambda a: _kubeconfig(a[0], a[1], _field(a[2], "data"), p.region)
            )
        )
        return [node_group, *addons]

    def _install_controllers(
        self, p: ProjectConfig, cfg: ClusterConfig, args: ClusterArgs
    ) -> list[k8s.helm.v3.Release]:
        prefix = p.prefix
        opts = child(self, provider=self.provider)
        releases = []
        lbc_role = irsa_role(
            self,
            p,
            purpose="aws-load-balancer-controller",
            oidc_provider_arn=self.oidc_provider_arn,
            oidc_issuer=self.oidc_issuer,
            namespace="kube-system",
            service_account="aws-load-balancer-controller",
            role_policy=load_balancer_controller_policy(),
        )
        releases.append(
            _release(
                "aws-load-balancer-controller",
                "kube-system",
                {
                    "clusterName": self.name,
                    "region": p.region,
                    "vpcId": args.vpc_id,
                    "serviceAccount": {
                        "name": "aws-load-balancer-controller",
                        "annotations": {"eks.amazonaws.com/role-arn": lbc_role.arn},
                    },
                    "defaultTags": p.tags,
                },
                opts,
                prefix,
            )
        )
        if not cfg.existing_metrics_server:
            # Neither EKS nor a kubeconfig'd cluster promises one; without it the HPA has no data.
            releases.append(_release("metrics-server", "kube-system", {}, opts, prefix))
        releases.append(
            _release("keda", "keda", {"podSecurityContext": {"runAsNonRoot": True}}, opts, prefix)
        )
        if args.install_argo_rollouts:
            releases.append(
                _release(
                    "argo-rollouts",
                    "argo-rollouts",
                    {"dashboard": {"enabled": False}},
                    opts,
                    prefix,
                )
            )
        # Only a cluster built here has the EBS CSI driver: on an existing one Prometheus keeps
        # the chart's emptyDir (DEPLOYMENT.md).
        storage_class = self._gp3_storage_class(p) if cfg.mode == "eks" else None
        if not cfg.existing_prometheus:
            releases.append(
                _release(
                    "kube-prometheus-stack",
                    MONITORING_NAMESPACE,
                    _prometheus_values(p, self, args, storage_class),
                    child(
                        self,
                        provider=self.provider,
                        depends_on=[storage_class] if storage_class else [],
                    ),
                    prefix,
                )
            )
        return releases

    def _gp3_storage_class(self, p: ProjectConfig) -> k8s.storage.v1.StorageClass:
        name = f"{p.prefix}-gp3"
        return k8s.storage.v1.StorageClass(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, labels=kube.labels(p)),
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            # The volume is made in the AZ the pod is scheduled to, not in a random one.
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=child(self, provider=self.provider),
        )


def _release(
    chart: str,
    namespace: str,
    values: dict[str, object],
    opts: pulumi.ResourceOptions,
    prefix: str,
) -> k8s.helm.v3.Release:
    repo, version = CHARTS[chart]
    return k8s.helm.v3.Release(
        f"{prefix}-{chart}",
        name=chart,
        chart=chart,
        version=version,
        namespace=namespace,
        create_namespace=True,
        repository_opts={"repo": repo},
        values=values,
        atomic=True,
        cleanup_on_fail=True,
        opts=opts,
    )


def _prometheus_values(
    p: ProjectConfig,
    cluster: Cluster,
    args: ClusterArgs,
    storage_class: k8s.storage.v1.StorageClass | None,
) -> dict[str, object]:
    alertmanager_sa: dict[str, object] = {}
    if args.alertmanager_topic_arn is not None:
        role = irsa_role(
            cluster,
            p,
            purpose="alertmanager",
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            namespace=MONITORING_NAMESPACE,
            service_account="kube-prometheus-stack-alertmanager",
            role_policy=policy(
                {
                    "Effect": "Allow",
                    "Action": "sns:Publish",
                    "Resource": args.alertmanager_topic_arn,
                }
            ),
        )
        alertmanager_sa = {"annotations": {"eks.amazonaws.com/role-arn": role.arn}}
        cluster.alertmanager_role = role
    return {
        "prometheus": {
            "prometheusSpec": {
                # Select every ServiceMonitor / PrometheusRule, not only the chart's own.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "retention": "15d",
                **(
                    {
                        "retentionSize": PROMETHEUS_RETENTION_SIZE,
                        "storageSpec": {
                            "volumeClaimTemplate": {
                                "spec": {
                                    "storageClassName": storage_class.metadata.name,
                                    "accessModes": ["ReadWriteOnce"],
                                    "resources": {"requests": {"storage": PROMETHEUS_VOLUME}},
                                }
                            }
                        },
                    }
                    if storage_class is not None
                    else {}
                ),
            }
        },
        "alertmanager": {
            "serviceAccount": alertmanager_sa,
            "alertmanagerSpec": {
                "alertmanagerConfigSelector": {"matchLabels": {"record.dev/alerting": "true"}},
                # Each AlertmanagerConfig routes only its own namespace's alerts: with "None"
                # Record's routes caught every alert in the cluster, Watchdog included.
                "alertmanagerConfigMatcherStrategy": {"type": "OnNamespace"},
            },
        },
        "grafana": {
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": "grafana_dashboard",
                    "searchNamespace": "ALL",
                }
            }
        },
    }


def _oidc_issuer(identities: Sequence[aws.eks.outputs.ClusterIdentity]) -> str:
    """The cluster's OIDC issuer URL, which EKS assigns to every cluster it creates."""
    oidcs = identities[0].oidcs if identities else None
    issuer = oidcs[0].issuer if oidcs else None
    if issuer is None:
        raise ValueError("the EKS cluster reports no OIDC issuer: IRSA cannot work without one")
    return issuer


def load_balancer_controller_policy() -> str:
    """Upstream's policy for the pinned chart's controller, unedited: a trimmed copy once left
    the controller unable to create the ALB, so the Ingress never got an address."""
    return LBC_IAM_POLICY.read_text()


def _field(value: object, name: str) -> str:
    # A typed output object on a deploy, a plain mapping under mocks.
    if isinstance(value, dict):
        return str(value[name])
    return str(getattr(value, name))


def _kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {"server": endpoint, "certificate-authority-data": ca_data},
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [
                {
                    "name": name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": [
                                "eks",
                                "get-token",
                                "--cluster-name",
                                name,
                                "--region",
                                region,
                            ],
                        }
                    },
                }
            ],
        }
    )
