"""Deploy runner: a GitHub Actions self-hosted runner inside the VPC, so that `pulumi up` can
reach a cluster whose API endpoint is private (``cluster.privateOnly``).

It is an AWS CodeBuild project in the private subnets that CodeBuild runs as a managed GitHub
Actions runner: GitHub's ``workflow_job`` webhook (event ``WORKFLOW_JOB_QUEUED``) starts a build,
the build registers an ephemeral runner for that one job and exits when the job ends. A
workflow job picks it with ``runs-on: codebuild-<project>-${{ github.run_id }}-${{
github.run_attempt }}`` (the stack output ``deployRunnerLabel``).

One manual step per account, before the first ``pulumi up`` that creates the runner: CodeBuild
must hold a GitHub source credential (CodeBuild console, "Connect to GitHub", or ``aws codebuild
import-source-credentials --server-type GITHUB --auth-type PERSONAL_ACCESS_TOKEN``), which it
uses to create the repository's webhook and to register each runner. It is an account-wide
secret a person grants from GitHub, so it is not this program's to create. (A CodeConnections
connection as that credential would also need ``codeconnections:GetConnectionToken`` on the
role below, which it does not get.)

Two identities, on purpose:

- The runner's own role (this module) is narrow in AWS: its log group, the network interfaces
  CodeBuild creates in the private subnets, ``eks:DescribeCluster`` on this cluster
  (``aws eks update-kubeconfig``), and ``sts:AssumeRole`` on the deploy role, nothing else.
  In Kubernetes it is cluster admin through an access entry: EKS makes only the cluster's
  creator admin by itself, and steps that run as the runner (``kubectl`` checks and rollout
  repairs after a deploy) reach the API whoever created the cluster, without the deploy
  role's AWS rights. (``pulumi up`` signs its Kubernetes requests as the deploy role.)
- ``pulumi up`` itself creates VPCs, IAM roles, KMS keys, RDS and EKS: a policy that allows it
  is ``*`` in all but name, and written here it would hand those rights to every job of the
  repository that names the runner's label. So the runner carries none of them: the job takes
  the deploy role for the ``pulumi up`` step, either by GitHub OIDC (as the workflows do; no
  right of the runner's is involved) or chained from the runner's role, which may assume
  ``<prefix>-deploy`` (``deploy_role_name``) and no other. That role exists before this program
  runs (it runs the first deploy, from outside the VPC, before any runner exists); to chain,
  its trust policy must name the runner's role (stack output ``deployRunnerRoleArn``): this
  program cannot widen it.

Anyone who can make a workflow job queue with that label gets both, so the repository must not
run workflows from forks on self-hosted runners, and deploy jobs belong behind a GitHub
environment with required reviewers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common import child, policy, tags
from infra.config import NAMESPACE, ConfigError, ProjectConfig

# CodeBuild's Ubuntu standard image (Docker, Python, git, the aws CLI): the deploy jobs are
# written for GitHub's ubuntu-24.04 runners and install what they need with apt-get (espeak-ng
# for the smoke check, jq, kubectl), which the Amazon Linux images do not have.
RUNNER_IMAGE = "aws/codebuild/standard:7.0"
# 4 vCPU / 7 GB: `pulumi up` builds the API image (and the model-server image) with Docker.
RUNNER_COMPUTE = "BUILD_GENERAL1_MEDIUM"
# A first deploy takes 25-40 minutes (DEPLOYMENT.md); an RDS replacement can take longer.
BUILD_TIMEOUT_MINUTES = 120
LOG_RETENTION_DAYS = 90
EKS_CLUSTER_ADMIN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
# GitHub's own rule for owner and repository names.
_REPOSITORY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


def project_name(prefix: str) -> str:
    return f"{prefix}-deploy-runner"


def deploy_role_name(prefix: str) -> str:
    """The role ``pulumi up`` runs as, made once per stack outside this program."""
    return f"{prefix}-deploy"


def runs_on_label(prefix: str) -> str:
    """What a workflow job puts in ``runs-on`` to run on this runner; CodeBuild matches the
    project by name and GitHub hands the job to the runner registered for that run."""
    run = "${{ github.run_id }}-${{ github.run_attempt }}"
    return f"codebuild-{project_name(prefix)}-{run}"


@dataclass
class RunnerArgs:
    project: ProjectConfig
    repository: str  # "owner/name"
    vpc_id: pulumi.Input[str]
    private_subnet_ids: list[pulumi.Input[str]]
    cluster_name: pulumi.Input[str]
    # The EKS cluster security group: on the API endpoint's network interfaces.
    cluster_security_group_id: pulumi.Input[str]
    account_id: pulumi.Input[str]


class Runner(pulumi.ComponentResource):
    role: aws.iam.Role
    security_group: aws.ec2.SecurityGroup
    codebuild_project: aws.codebuild.Project
    label: str

    def __init__(
        self, name: str, args: RunnerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Runner", name, None, opts)
        p = args.project
        if not _REPOSITORY.match(args.repository):
            raise ConfigError(
                f"{NAMESPACE}:cluster.runnerRepository must be 'owner/name' on GitHub, "
                f"got {args.repository!r}"
            )
        self.label = runs_on_label(p.prefix)
        project = project_name(p.prefix)
        arns = _Arns(p.region, args.account_id, p.prefix, args.cluster_name)

        log_group = aws.cloudwatch.LogGroup(
            project,
            name=f"/aws/codebuild/{project}",
            retention_in_days=LOG_RETENTION_DAYS,
            tags=tags(p, project),
            opts=child(self),
        )
        self.security_group = aws.ec2.SecurityGroup(
            project,
            name=project,
            description=f"{p.prefix}: deploy runner (CodeBuild), outbound HTTPS only",
            vpc_id=args.vpc_id,
            ingress=[],
            # GitHub, the AWS APIs, Pulumi's plugins, image and package registries and the
            # cluster's endpoint all speak HTTPS; DNS goes to the VPC resolver, which security
            # groups do not filter. Nothing connects in: the runner polls GitHub for its job.
            egress=[
                {
                    "description": "HTTPS out",
                    "protocol": "tcp",
                    "from_port": 443,
                    "to_port": 443,
                    "cidr_blocks": ["0.0.0.0/0"],
                }
            ],
            tags=tags(p, project),
            opts=child(self),
        )
        # A rule of its own on the group EKS manages (never inline): EKS owns that group's
        # other rules.
        aws.vpc.SecurityGroupIngressRule(
            f"{project}-to-api",
            security_group_id=args.cluster_security_group_id,
            referenced_security_group_id=self.security_group.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="Kubernetes API from the deploy runner",
            tags=tags(p, f"{project}-to-api"),
            opts=child(self),
        )
        self.role = aws.iam.Role(
            project,
            name=project,
            assume_role_policy=_trust_policy(arns),
            max_session_duration=3600,
            tags=tags(p, project),
            opts=child(self),
        )
        role_policy = aws.iam.RolePolicy(
            project,
            role=self.role.id,
            policy=runner_policy(arns, args.private_subnet_ids, self.security_group.id),
            opts=child(self),
        )
        entry = aws.eks.AccessEntry(
            project,
            cluster_name=args.cluster_name,
            principal_arn=self.role.arn,
            type="STANDARD",
            tags=tags(p, project),
            opts=child(self),
        )
        aws.eks.AccessPolicyAssociation(
            project,
            cluster_name=args.cluster_name,
            principal_arn=entry.principal_arn,
            policy_arn=EKS_CLUSTER_ADMIN,
            access_scope={"type": "cluster"},
            opts=child(self),
        )
        self.codebuild_project = aws.codebuild.Project(
            project,
            name=project,
            description=f"{p.prefix}: GitHub Actions runner for deploys, inside the VPC",
            service_role=self.role.arn,
            source={
                "type": "GITHUB",
                "location": f"https://github.com/{args.repository}.git",
                "git_clone_depth": 1,
            },
            artifacts={"type": "NO_ARTIFACTS"},
            environment={
                "type": "LINUX_CONTAINER",
                "compute_type": RUNNER_COMPUTE,
                "image": RUNNER_IMAGE,
                "image_pull_credentials_type": "CODEBUILD",
                # `pulumi up` builds the images with Docker, whose daemon needs it.
                "privileged_mode": True,
            },
            vpc_config={
                "vpc_id": args.vpc_id,
                "subnets": args.private_subnet_ids,
                "security_group_ids": [self.security_group.id],
            },
            logs_config={
                "cloudwatch_logs": {"status": "ENABLED", "group_name": log_group.name},
                "s3_logs": {"status": "DISABLED"},
            },
            build_timeout=BUILD_TIMEOUT_MINUTES,
            tags=tags(p, project),
            # CodeBuild checks at CreateProject that the role may describe the VPC.
            opts=child(self, depends_on=[role_policy]),
        )
        aws.codebuild.Webhook(
            project,
            project_name=self.codebuild_project.name,
            build_type="BUILD",
            filter_groups=[
                {"filters": [{"type": "EVENT", "pattern": "WORKFLOW_JOB_QUEUED"}]},
            ],
            opts=child(self),
        )
        self.register_outputs({"label": self.label, "role_arn": self.role.arn, "project": project})


@dataclass
class _Arns:
    region: str
    account_id: pulumi.Input[str]
    prefix: str
    cluster_name: pulumi.Input[str]

    @property
    def project(self) -> str:
        return project_name(self.prefix)

    def _arn(self, service: str, resource: pulumi.Input[str]) -> pulumi.Output[str]:
        return pulumi.Output.concat(
            f"arn:aws:{service}:{self.region}:", self.account_id, ":", resource
        )

    @property
    def codebuild_project(self) -> pulumi.Output[str]:
        return self._arn("codebuild", f"project/{self.project}")

    @property
    def log_group(self) -> pulumi.Output[str]:
        return self._arn("logs", f"log-group:/aws/codebuild/{self.project}")

    @property
    def log_streams(self) -> pulumi.Output[str]:
        return self._arn("logs", f"log-group:/aws/codebuild/{self.project}:log-stream:*")

    @property
    def cluster(self) -> pulumi.Output[str]:
        return self._arn("eks", pulumi.Output.concat("cluster/", self.cluster_name))

    def ec2(self, resource: pulumi.Input[str]) -> pulumi.Output[str]:
        return self._arn("ec2", resource)

    @property
    def deploy_role(self) -> pulumi.Output[str]:
        return pulumi.Output.concat(
            "arn:aws:iam::", self.account_id, ":role/", deploy_role_name(self.prefix)
        )


def _trust_policy(arns: _Arns) -> pulumi.Output[str]:
    # Only CodeBuild, and only for this project in this account (confused deputy).
    return pulumi.Output.all(arns.account_id, arns.codebuild_project).apply(
        lambda a: json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "codebuild.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                        "Condition": {
                            "StringEquals": {"aws:SourceAccount": a[0]},
                            "ArnLike": {"aws:SourceArn": a[1]},
                        },
                    }
                ],
            }
        )
    )


def runner_policy(
    arns: _Arns, subnet_ids: list[pulumi.Input[str]], security_group_id: pulumi.Input[str]
) -> pulumi.Output[str]:
    """What a CodeBuild build in the VPC needs, as AWS documents it for VPC builds ("Allow
    CodeBuild access to AWS services required to create a VPC network interface"), with every
    resource narrowed as far as IAM allows, and the two things the deploy job does as itself."""
    subnet_arns = [arns.ec2(pulumi.Output.concat("subnet/", s)) for s in subnet_ids]
    return policy(
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [arns.log_group, arns.log_streams],
        },
        {
            # EC2's Describe* calls have no resource-level permissions: "*" is the only
            # resource IAM accepts for them. They read, never change.
            "Sid": "DescribeNetwork",
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeDhcpOptions",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeSubnets",
                "ec2:DescribeVpcs",
            ],
            "Resource": "*",
        },
        {
            # AWS's example grants these two on "*"; IAM authorizes CreateNetworkInterface on
            # the new interface, its subnet and its security group, so: only in the runner's
            # subnets, only with the runner's group. Interface IDs are not known in advance.
            "Sid": "CreateBuildInterfaces",
            "Effect": "Allow",
            "Action": "ec2:CreateNetworkInterface",
            "Resource": [
                arns.ec2("network-interface/*"),
                *subnet_arns,
                arns.ec2(pulumi.Output.concat("security-group/", security_group_id)),
            ],
        },
        {
            "Sid": "DeleteBuildInterfaces",
            "Effect": "Allow",
            "Action": "ec2:DeleteNetworkInterface",
            "Resource": arns.ec2("network-interface/*"),
        },
        {
            # As AWS documents it: only in the runner's subnets, only for CodeBuild.
            "Sid": "AttachToCodeBuild",
            "Effect": "Allow",
            "Action": "ec2:CreateNetworkInterfacePermission",
            "Resource": arns.ec2("network-interface/*"),
            "Condition": {
                "StringEquals": {
                    "ec2:Subnet": subnet_arns,
                    "ec2:AuthorizedService": "codebuild.amazonaws.com",
                }
            },
        },
        {
            "Sid": "Kubeconfig",
            "Effect": "Allow",
            "Action": "eks:DescribeCluster",
            "Resource": arns.cluster,
        },
        {
            "Sid": "AssumeDeployRole",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": arns.deploy_role,
        },
    )
