"""Network: a VPC across three AZs, public and private subnets, NAT, an S3 gateway endpoint."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common import child, tags
from infra.config import NetworkConfig, ProjectConfig


@dataclass
class NetworkArgs:
    project: ProjectConfig
    network: NetworkConfig


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    vpc_cidr: str
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Network", name, None, opts)
        p, cfg = args.project, args.network
        prefix = p.prefix
        self.vpc_cidr = cfg.cidr

        vpc = aws.ec2.Vpc(
            f"{prefix}-vpc",
            cidr_block=cfg.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=tags(p, f"{prefix}-vpc"),
            opts=child(self),
        )
        # A VPC's default security group allows all traffic between its members: empty it.
        aws.ec2.DefaultSecurityGroup(
            f"{prefix}-default-sg",
            vpc_id=vpc.id,
            tags=tags(p, f"{prefix}-default-sg"),
            opts=child(self),
        )
        igw = aws.ec2.InternetGateway(
            f"{prefix}-igw", vpc_id=vpc.id, tags=tags(p, f"{prefix}-igw"), opts=child(self)
        )
        zones = aws.get_availability_zones_output(state="available")

        # /20 each: 3 public + 3 private out of a /16 leaves room for a later tier.
        blocks = list(ipaddress.ip_network(cfg.cidr).subnets(new_prefix=20))
        public_rt = aws.ec2.RouteTable(
            f"{prefix}-public",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags=tags(p, f"{prefix}-public"),
            opts=child(self),
        )
        public_subnets: list[aws.ec2.Subnet] = []
        private_subnets: list[aws.ec2.Subnet] = []
        for index in range(cfg.az_count):
            az = zones.names[index]
            public = aws.ec2.Subnet(
                f"{prefix}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=str(blocks[index]),
                availability_zone=az,
                # Load balancers get public addresses; instances never do.
                map_public_ip_on_launch=False,
                tags=tags(p, f"{prefix}-public-{index}", **{"kubernetes.io/role/elb": "1"}),
                opts=child(self),
            )
            aws.ec2.RouteTableAssociation(
                f"{prefix}-public-{index}",
                subnet_id=public.id,
                route_table_id=public_rt.id,
                opts=child(self),
            )
            private = aws.ec2.Subnet(
                f"{prefix}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=str(blocks[8 + index]),
                availability_zone=az,
                tags=tags(
                    p, f"{prefix}-private-{index}", **{"kubernetes.io/role/internal-elb": "1"}
                ),
                opts=child(self),
            )
            public_subnets.append(public)
            private_subnets.append(private)

        # One NAT per AZ in production (an AZ outage must not cut the others off the
        # internet); one otherwise, which costs a third and fails with its AZ.
        nat_count = cfg.az_count if cfg.nat_per_az else 1
        nats = []
        for index in range(nat_count):
            eip = aws.ec2.Eip(
                f"{prefix}-nat-{index}",
                domain="vpc",
                tags=tags(p, f"{prefix}-nat-{index}"),
                opts=child(self),
            )
            nats.append(
                aws.ec2.NatGateway(
                    f"{prefix}-nat-{index}",
                    allocation_id=eip.id,
                    subnet_id=public_subnets[index].id,
                    tags=tags(p, f"{prefix}-nat-{index}"),
                    opts=child(self, depends_on=[igw]),
                )
            )
        private_rts = []
        for index, subnet in enumerate(private_subnets):
            nat = nats[index % nat_count]
            rt = aws.ec2.RouteTable(
                f"{prefix}-private-{index}",
                vpc_id=vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                tags=tags(p, f"{prefix}-private-{index}"),
                opts=child(self),
            )
            aws.ec2.RouteTableAssociation(
                f"{prefix}-private-{index}",
                subnet_id=subnet.id,
                route_table_id=rt.id,
                opts=child(self),
            )
            private_rts.append(rt)

        # Recordings are large: S3 traffic through the gateway endpoint is free, through NAT
        # it is billed per GB.
        aws.ec2.VpcEndpoint(
            f"{prefix}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{p.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_rts],
            tags=tags(p, f"{prefix}-s3"),
            opts=child(self),
        )
        self.vpc_id = vpc.id
        self.private_subnet_ids = [s.id for s in private_subnets]
        self.public_subnet_ids = [s.id for s in public_subnets]
        self.register_outputs(
            {"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids}
        )
