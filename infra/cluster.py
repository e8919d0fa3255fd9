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
from infra.provisioning_access import cluster_exception, provisioning_namespace

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
EKS_CLUSTER_ADMIN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
# Kubernetes's "edit" role as EKS ships it: workloads, Services, ConfigMaps, Secrets, Jobs,
# Ingresses, NetworkPolicies, HPAs, PDBs, ServiceAccounts; no RBAC, no custom resources.
EKS_EDIT = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSEditPolicy"
# Every preview's namespace (infra/preview.py: record-pr-<n>). EKS scopes an access policy to
# namespaces by name and accepts a trailing wildcard ("dev-*": EKS User Guide, "Associate
# access policies with access entries"); no base stack's namespace (record-<stack>) matches.
PREVIEW_NAMESPACES = "record-pr-*"
# The Kubernetes group a preview role's access entry puts it in: what EKS's access policies
# lack (creating its namespace, KEDA's objects) is granted to it by RBAC below, and an
# admission policy keeps it to the previews' namespaces.
PREVIEW_GROUP = "record:preview-deployers"
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
    # The EKS cluster security group: on the API endpoint's network interfaces and, since the
    # node group names no group of its own, on every node (what RDS and Valkey admit).
    cluster_security_group_id: pulumi.Output[str]
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
            assert cfg.cluster_security_group_id is not None
            assert cfg.oidc_provider_arn is not None
            assert cfg.oidc_issuer is not None
            self.kubeconfig = pulumi.Output.secret(cfg.kubeconfig)
            self.cluster_security_group_id = pulumi.Output.from_input(cfg.cluster_security_group_id)
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
                "cluster_security_group_id": self.cluster_security_group_id,
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
                # EKS installs vpc-cni itself (aws-node) with every new cluster: taking it over
                # with our configuration values is a conflict, and NONE (the default) fails
                # the create with ConfigurationConflict. Nothing else manages aws-node here.
                resolve_conflicts_on_create="OVERWRITE",
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

        access = self._access_entries(p, cfg, cluster)
        self.name = cluster.name
        self.cluster_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.oidc_provider_arn = oidc.arn
        self.oidc_issuer = issuer
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority).apply(
                lambda a: _kubeconfig(a[0], a[1], _field(a[2], "data"), p.region)
            )
        )
        return [node_group, *addons, *access]

    def _access_entries(
        self, p: ProjectConfig, cfg: ClusterConfig, cluster: aws.eks.Cluster
    ) -> list[pulumi.Resource]:
        """Who besides the cluster's creator reaches the API: with authentication mode "API"
        an IAM role without an access entry is refused (Unauthorized), whatever its IAM
        rights. The admins' entries come before the Kubernetes provider is used, so CI's
        deploy role can run the `pulumi up` after the one that created the cluster."""
        made: list[pulumi.Resource] = []
        for index, arn in enumerate(cfg.admin_role_arns):
            made.append(
                self._access(p, cluster, f"admin-{index}", arn, policy_arn=EKS_CLUSTER_ADMIN)
            )
        for index, arn in enumerate(cfg.preview_role_arns):
            made.append(
                self._access(
                    p,
                    cluster,
                    f"preview-{index}",
                    arn,
                    policy_arn=EKS_EDIT,
                    namespaces=[PREVIEW_NAMESPACES],
                    groups=[PREVIEW_GROUP],
                )
            )
        return made

    def _access(
        self,
        p: ProjectConfig,
        cluster: aws.eks.Cluster,
        short: str,
        principal_arn: str,
        *,
        policy_arn: str,
        namespaces: list[str] | None = None,
        groups: list[str] | None = None,
    ) -> aws.eks.AccessPolicyAssociation:
        name = f"{p.prefix}-access-{short}"
        entry = aws.eks.AccessEntry(
            name,
            cluster_name=cluster.name,
            principal_arn=principal_arn,
            type="STANDARD",
            kubernetes_groups=groups or None,
            tags=tags(p, name),
            opts=child(self),
        )
        scope = aws.eks.AccessPolicyAssociationAccessScopeArgs(
            type="namespace" if namespaces else "cluster", namespaces=namespaces
        )
        return aws.eks.AccessPolicyAssociation(
            name,
            cluster_name=cluster.name,
            principal_arn=entry.principal_arn,
            policy_arn=policy_arn,
            access_scope=scope,
            opts=child(self),
        )

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
        lbc = _release(
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
                # Its Service webhook (failurePolicy Fail, every Service in the cluster) only
                # defaults LoadBalancer Services to its NLBs; Record has none (an ALB Ingress).
                "enableServiceMutatorWebhook": False,
            },
            opts,
            prefix,
        )
        releases.append(lbc)
        # The controller registers webhooks that admit other objects (Services until the one
        # above was switched off, Ingresses, pods in labelled namespaces): a chart installed
        # while its webhook Service has no endpoints fails ("no endpoints available for
        # service aws-load-balancer-webhook-service", kubernetes-sigs/aws-load-balancer-
        # controller#4140). The release waits for its pods (atomic), so the others come after.
        opts = child(self, provider=self.provider, depends_on=[lbc])
        if not cfg.existing_metrics_server:
            # Neither EKS nor a kubeconfig'd cluster promises one; without it the HPA has no data.
            releases.append(_release("metrics-server", "kube-system", {}, opts, prefix))
        releases.append(_release("keda", "keda", _keda_values(), opts, prefix))
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
                        depends_on=[lbc, *([storage_class] if storage_class else [])],
                    ),
                    prefix,
                )
            )
        if cfg.preview_role_arns:
            self._preview_deployers(p)
        return releases

    def _preview_deployers(self, p: ProjectConfig) -> None:
        """What a preview role needs besides EKS's edit policy in the previews' namespaces:
        to create and delete its namespace (cluster-scoped) and KEDA's objects (custom
        resources, in no EKS policy). RBAC cannot name the namespaces a role may create, so an
        admission policy refuses every write of the group outside ``record-pr-*``: the base
        stack's namespace, kube-system and the cluster's own objects stay out of reach."""
        opts = child(self, provider=self.provider)
        name = "record-preview-deployer"
        writes = ["get", "list", "watch", "create", "update", "patch", "delete"]
        role = k8s.rbac.v1.ClusterRole(
            f"{p.prefix}-{name}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, labels=kube.labels(p)),
            rules=[
                k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["namespaces"], verbs=writes),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["keda.sh"],
                    resources=["scaledobjects", "triggerauthentications"],
                    verbs=writes,
                ),
            ],
            opts=opts,
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{p.prefix}-{name}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, labels=kube.labels(p)),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role.metadata.name
            ),
            subjects=[
                k8s.rbac.v1.SubjectArgs(
                    api_group="rbac.authorization.k8s.io", kind="Group", name=PREVIEW_GROUP
                )
            ],
            opts=opts,
        )
        admission = k8s.admissionregistration.v1
        policy_name = "record-previews-stay-in-their-namespaces"
        previews = PREVIEW_NAMESPACES.removesuffix("*")
        vap = admission.ValidatingAdmissionPolicy(
            f"{p.prefix}-{policy_name}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, labels=kube.labels(p)),
            spec=admission.ValidatingAdmissionPolicySpecArgs(
                failure_policy="Fail",
                match_constraints=admission.MatchResourcesArgs(
                    resource_rules=[
                        admission.NamedRuleWithOperationsArgs(
                            api_groups=["*"],
                            api_versions=["*"],
                            operations=["CREATE", "UPDATE", "DELETE", "CONNECT"],
                            resources=["*", "*/*"],
                        )
                    ]
                ),
                match_conditions=[
                    admission.MatchConditionArgs(
                        name="preview-deployers",
                        expression=f"'{PREVIEW_GROUP}' in request.userInfo.groups",
                    )
                ],
                validations=[
                    admission.ValidationArgs(
                        # A Namespace is named by request.name; anything else lives in
                        # request.namespace ("" when cluster-scoped: refused).
                        # The one exception: previews' database provisioner Jobs and their
                        # Secret in the base's provisioning namespace (record-<base>-db-
                        # provisioning, never the base namespace itself), judged by
                        # infra/provisioning_access.py's own policy.
                        expression=(
                            "(request.resource.resource == 'namespaces' && "
                            f"request.resource.group == '' ? request.name.startsWith('{previews}')"
                            f" : request.namespace.startsWith('{previews}')) || "
                            f"({cluster_exception(provisioning_namespace(p.prefix))})"
                        ),
                        message=f"preview deployers write only in {PREVIEW_NAMESPACES} namespaces",
                    )
                ],
            ),
            opts=opts,
        )
        admission.ValidatingAdmissionPolicyBinding(
            f"{p.prefix}-{policy_name}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, labels=kube.labels(p)),
            spec=admission.ValidatingAdmissionPolicyBindingSpecArgs(
                policy_name=vap.metadata.name, validation_actions=["Deny"]
            ),
            opts=opts,
        )

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


def _keda_values() -> dict[str, object]:
    # The chart (2.17.2) reads podSecurityContext.operator, .metricServer and .webhooks, and
    # the top level only where a component's own is empty: a top-level runAsNonRoot was
    # ignored. Written per component so a chart default cannot drop it.
    non_root = {"runAsNonRoot": True}
    return {
        "podSecurityContext": {
            component: non_root for component in ("operator", "metricServer", "webhooks")
        }
    }


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
