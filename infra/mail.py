"""Mail: an Amazon SES domain identity with DKIM, and SMTP credentials that can only send as it.

The worker sends every mail (a procrastinate job) over SMTP with STARTTLS on port 587 to
SES's regional endpoint. Its credentials belong to an IAM user whose one inline policy allows
``ses:SendRawEmail`` / ``ses:SendEmail`` on this identity and only with a From address at the
mail domain; the SMTP password is derived from the access key's secret (``sesSmtpPasswordV4``,
region-specific) and never leaves Pulumi secrets and the worker's Kubernetes Secret.

The stack does not manage a DNS zone (the ALB record is made by hand too, DEPLOYMENT.md), so
the DKIM, verification and MAIL FROM records are exported as ``mailDnsRecords`` to add at the
DNS provider. Preview stacks create none of this: they send through their base stack's
identity with its credentials (infra/preview.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.common import child, tags
from infra.config import MailConfig, ProjectConfig

SMTP_PORT = 587
# The SMTP interface calls SendRawEmail; SendEmail is the same permission for the API form.
SEND_ACTIONS = ("ses:SendEmail", "ses:SendRawEmail")


def smtp_host(region: str) -> str:
    return f"email-smtp.{region}.amazonaws.com"


def send_policy(identity_arn: str, domain: str) -> dict[str, Any]:
    """The SMTP user's only policy: send as this identity, From an address at its domain."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SendAsMailDomainOnly",
                "Effect": "Allow",
                "Action": list(SEND_ACTIONS),
                "Resource": identity_arn,
                "Condition": {"StringLike": {"ses:FromAddress": f"*@{domain}"}},
            }
        ],
    }


def dns_records(
    domain: str,
    region: str,
    verification_token: str,
    dkim_tokens: list[str],
    mail_from_domain: str | None = None,
) -> list[dict[str, str]]:
    """The records SES needs at the DNS provider: DKIM (which also verifies the domain), the
    verification TXT and, with a custom MAIL FROM domain, its MX and SPF."""
    records = [
        {"name": f"_amazonses.{domain}", "type": "TXT", "value": f'"{verification_token}"'},
        *(
            {
                "name": f"{token}._domainkey.{domain}",
                "type": "CNAME",
                "value": f"{token}.dkim.amazonses.com",
            }
            for token in dkim_tokens
        ),
    ]
    if mail_from_domain is not None:
        records += [
            {
                "name": mail_from_domain,
                "type": "MX",
                "value": f"10 feedback-smtp.{region}.amazonses.com",
            },
            {
                "name": mail_from_domain,
                "type": "TXT",
                "value": '"v=spf1 include:amazonses.com ~all"',
            },
        ]
    return records


@dataclass(frozen=True)
class MailSettings:
    """What the pods need to send: the From header, the endpoint and the SMTP credentials.

    Built by ``Mail`` on a base stack and from the base stack's outputs on a preview.
    """

    mail_from: pulumi.Input[str]
    smtp_host: pulumi.Input[str]
    smtp_username: pulumi.Input[str]
    smtp_password: pulumi.Input[str]
    smtp_port: int = SMTP_PORT
    starttls: bool = True


@dataclass
class MailArgs:
    project: ProjectConfig
    mail: MailConfig


class Mail(pulumi.ComponentResource):
    identity: aws.ses.DomainIdentity
    dkim: aws.ses.DomainDkim
    user: aws.iam.User
    access_key: aws.iam.AccessKey
    settings: MailSettings
    dns_records: pulumi.Output[list[dict[str, str]]]

    def __init__(
        self, name: str, args: MailArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:Mail", name, None, opts)
        p, cfg = args.project, args.mail
        prefix = f"{p.prefix}-mail"

        self.identity = aws.ses.DomainIdentity(prefix, domain=cfg.domain, opts=child(self))
        # Easy DKIM: three CNAMEs to SES-held keys, which SES rotates itself.
        self.dkim = aws.ses.DomainDkim(
            f"{prefix}-dkim", domain=self.identity.domain, opts=child(self)
        )
        if cfg.mail_from_domain is not None:
            aws.ses.MailFrom(
                f"{prefix}-from",
                domain=self.identity.domain,
                mail_from_domain=cfg.mail_from_domain,
                # Until its MX record exists, SES falls back to amazonses.com instead of
                # refusing to send.
                behavior_on_mx_failure="UseDefaultValue",
                opts=child(self),
            )

        user_name = f"{p.prefix}-smtp"
        self.user = aws.iam.User(
            user_name,
            name=user_name,
            path="/record/",
            tags=tags(p, user_name, purpose="ses-smtp"),
            opts=child(self),
        )
        aws.iam.UserPolicy(
            user_name,
            name=f"{user_name}-send",
            user=self.user.name,
            policy=self.identity.arn.apply(lambda arn: json.dumps(send_policy(arn, cfg.domain))),
            opts=child(self),
        )
        # Rotation: `pulumi up --replace <this key's URN>` makes the new key first, rolls the
        # worker onto it and only then deletes the old one (DEPLOYMENT.md).
        self.access_key = aws.iam.AccessKey(
            f"{user_name}-key", user=self.user.name, opts=child(self)
        )
        self.settings = MailSettings(
            mail_from=cfg.mail_from,
            smtp_host=smtp_host(p.region),
            smtp_username=pulumi.Output.secret(self.access_key.id),
            smtp_password=pulumi.Output.secret(self.access_key.ses_smtp_password_v4),
        )
        self.dns_records = pulumi.Output.all(
            self.identity.verification_token, self.dkim.dkim_tokens
        ).apply(lambda a: dns_records(cfg.domain, p.region, a[0], a[1] or [], cfg.mail_from_domain))
        self.register_outputs({"identity_arn": self.identity.arn, "dns_records": self.dns_records})
