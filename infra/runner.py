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

The runner's role is what CodeBuild itself needs and nothing a job could use: its log group,
the network interfaces CodeBuild creates in the private subnets (deleted only there), and
``eks:DescribeCluster`` on this cluster (``aws eks update-kubeconfig``). It has no access entry
on the cluster and may assume no role. A job's credentials come from GitHub OIDC
(``aws-actions/configure-aws-credentials``, trusted per GitHub environment), so they are the
environment's, whichever runner the job lands on: a job that reaches this runner without
passing the environment's reviewers holds no AWS or Kubernetes right here beyond its network
position. (The role once was cluster admin and could assume ``<prefix>-deploy``: any pull
request that put the runner's label in ``runs-on`` had both.)

Who can start it: the webhook is the repository's own (no organization scope), so only its
events arrive, and with ``cluster.runnerActorIds`` only jobs queued by those GitHub accounts
(CodeBuild's ``ACTOR_ACCOUNT_ID`` filter, which AWS recommends for public repositories). Still
keep fork pull requests away from self-hosted runners in the repository's settings.
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
# GitHub's own rule for owner and repository names.
_REPOSITORY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


def project_name(prefix: str) -> str:
    return f"{prefix}-deploy-runner"


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
    # GitHub account ids whose queued jobs may start a build; empty, anyone's.
    actor_ids: tuple[str, ...] = ()


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
        arns = _Arns(p.region, args.account_id, p.prefix, args.cluster_name, args.vpc_id)

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
            description=f"{p.prefix}: deploy runner (CodeBuild), outbound HTTP(S) only",
            vpc_id=args.vpc_id,
            ingress=[],
            egress=[
                # GitHub, the AWS APIs, Pulumi's plugins, image registries and the cluster's
                # endpoint speak HTTPS; DNS goes to the VPC resolver, which security groups do
                # not filter. Nothing connects in: the runner polls GitHub for its job.
                {
                    "description": "HTTPS out",
                    "protocol": "tcp",
                    "from_port": 443,
                    "to_port": 443,
                    "cidr_blocks": ["0.0.0.0/0"],
                },
                # The jobs `apt-get install` (jq, espeak-ng): Ubuntu's archive and its mirrors
                # serve over plain HTTP (apt checks the signed Release files instead).
                {
                    "description": "HTTP out (apt)",
                    "protocol": "tcp",
                    "from_port": 80,
                    "to_port": 80,
                    "cidr_blocks": ["0.0.0.0/0"],
                },
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
            filter_groups=webhook_filter_groups(args.actor_ids),
            opts=child(self),
        )
        if not args.actor_ids:
            pulumi.log.warn(
                f"{NAMESPACE}:cluster.runnerActorIds is empty: any job queued in "
                f"{args.repository} with the runner's label starts it (a pull request's "
                "too); list the GitHub account ids allowed to deploy",
                resource=self,
            )
        self.register_outputs({"label": self.label, "role_arn": self.role.arn, "project": project})


def webhook_filter_groups(actor_ids: tuple[str, ...]) -> list[aws.codebuild.WebhookFilterGroupArgs]:
    """One group: the queued-job event and, when given, its actor among ``actor_ids``.

    A repository webhook (no ``scope_configuration``) receives that repository's events only;
    CodeBuild's REPOSITORY_NAME filter is for organization and global webhooks. The actor is
    the GitHub account that queued the job (a fork's pull request: the fork's author), matched
    by numeric id, which cannot be renamed or re-registered as a login can."""
    filters = [
        aws.codebuild.WebhookFilterGroupFilterArgs(type="EVENT", pattern="WORKFLOW_JOB_QUEUED")
    ]
    if actor_ids:
        pattern = "^(" + "|".join(re.escape(a) for a in actor_ids) + ")$"
        filters.append(
            aws.codebuild.WebhookFilterGroupFilterArgs(type="ACTOR_ACCOUNT_ID", pattern=pattern)
        )
    return [aws.codebuild.WebhookFilterGroupArgs(filters=filters)]


@dataclass
class _Arns:
    region: str
    account_id: pulumi.Input[str]
    prefix: str
    cluster_name: pulumi.Input[str]
    vpc_id: pulumi.Input[str]

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
    def vpc(self) -> pulumi.Output[str]:
        return self.ec2(pulumi.Output.concat("vpc/", self.vpc_id))


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
    resource narrowed as far as IAM allows, and the kubeconfig lookup."""
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
            # Interface IDs are not known in advance, but an interface's subnet and VPC are
            # condition keys of DeleteNetworkInterface: the runner's subnets of this VPC only,
            # never an interface elsewhere in the account. (Interfaces in use, such as the
            # nodes' and the API endpoint's, cannot be deleted by anyone while attached.)
            "Sid": "DeleteBuildInterfaces",
            "Effect": "Allow",
            "Action": "ec2:DeleteNetworkInterface",
            "Resource": arns.ec2("network-interface/*"),
            "Condition": {"StringEquals": {"ec2:Subnet": subnet_arns, "ec2:Vpc": arns.vpc}},
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
    )
