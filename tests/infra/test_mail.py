"""Outgoing mail: the SES identity, the SMTP user that can only send as it, and the settings
the worker and the API get (the password only through a Secret, only in the worker)."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.iam.access_control import IAMPolicy, PermissionResult

from infra.config import ConfigError
from infra.mail import SEND_ACTIONS, dns_records, send_policy
from infra.plan import ACCOUNT, Plan, render
from tests.infra.conftest import STACKS, of_kind, one

BASE_STACKS = ("dev", "staging", "prod")
MAIL_DOMAINS = {
    "dev": "dev.record.example.com",
    "staging": "staging.record.example.com",
    "prod": "record.example.com",
}
REGION = "eu-west-1"
NO_APP_CONFIG = ("record-db-provision-", "record-rollout-gate-")
SMTP_KEYS = {"SMTP_USERNAME", "SMTP_PASSWORD"}


def _config_map(plan: Plan) -> dict[str, str]:
    config = one(m for m in of_kind(plan, "ConfigMap") if m["metadata"]["name"] == "record-config")
    return dict(config["data"])


def _workload(plan: Plan, name: str) -> dict[str, Any]:
    return one(
        m
        for m in plan.manifests
        if m["kind"] in {"Deployment", "Rollout"} and m["metadata"]["name"] == name
    )


@pytest.mark.parametrize("stack", BASE_STACKS)
def test_base_stack_has_an_identity_dkim_and_a_send_only_user(
    plans: dict[str, Plan], stack: str
) -> None:
    plan = plans[stack]
    domain = MAIL_DOMAINS[stack]
    identity = one(plan.of_type("aws:ses/domainIdentity:DomainIdentity"))
    assert identity["inputs"]["domain"] == domain
    assert one(plan.of_type("aws:ses/domainDkim:DomainDkim"))["inputs"]["domain"] == domain
    # No custom MAIL FROM unless configured.
    assert not plan.of_type("aws:ses/mailFrom:MailFrom")

    user = one(plan.of_type("aws:iam/user:User"))["inputs"]
    assert user["name"] == f"record-{stack}-smtp"
    key = one(plan.of_type("aws:iam/accessKey:AccessKey"))["inputs"]
    assert key["user"] == user["name"]
    # The user's only policy is the inline one: nothing attached, no group.
    for absent in (
        "aws:iam/userPolicyAttachment:UserPolicyAttachment",
        "aws:iam/policyAttachment:PolicyAttachment",
        "aws:iam/userGroupMembership:UserGroupMembership",
        "aws:iam/groupMembership:GroupMembership",
    ):
        assert not plan.of_type(absent), absent
    user_policy = one(plan.of_type("aws:iam/userPolicy:UserPolicy"))["inputs"]
    assert user_policy["user"] == user["name"]
    identity_arn = f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/{domain}"
    assert json.loads(user_policy["policy"]) == send_policy(identity_arn, domain)


@pytest.mark.parametrize("stack", STACKS)
def test_workloads_get_smtp_settings_and_the_password_only_from_a_secret(
    plans: dict[str, Plan], stack: str
) -> None:
    plan = plans[stack]
    data = _config_map(plan)
    assert data["MAIL_BACKEND"] == "smtp"
    assert data["SMTP_PORT"] == "587"
    assert data["SMTP_STARTTLS"] == "true"
    assert data["PUBLIC_URL"].startswith("https://")
    if stack == "preview":
        # The base stack's identity, endpoint and From address (its outputs).
        assert data["SMTP_HOST"] == "offline-placeholder-base-smtpHost"
        assert data["MAIL_FROM"] == "offline-placeholder-base-mailFrom"
    else:
        assert data["SMTP_HOST"] == f"email-smtp.{REGION}.amazonaws.com"
        assert data["MAIL_FROM"] == f"Record <no-reply@{MAIL_DOMAINS[stack]}>"
    assert not SMTP_KEYS & set(data)

    secrets = {m["metadata"]["name"]: m for m in of_kind(plan, "Secret")}
    assert set(secrets["record-smtp"]["stringData"]) == SMTP_KEYS
    assert set(secrets["record-smtp"]["stringData"].values()) == {"[secret]"}
    # Not in the Secret every pod loads with envFrom.
    assert not SMTP_KEYS & set(secrets["record-secrets"]["stringData"])

    worker = one(_workload(plan, "record-worker")["spec"]["template"]["spec"]["containers"])
    env = {e["name"]: e for e in worker["env"]}
    for key in SMTP_KEYS:
        assert "value" not in env[key], key
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "record-smtp", "key": key}}
    # Every other pod (API, migration, model server) neither references nor loads it.
    for manifest in plan.manifests:
        if manifest["kind"] not in {"Deployment", "Rollout", "Job"}:
            continue
        pod = manifest["spec"]["template"]["spec"]
        name = manifest["metadata"]["name"]
        for container in pod["containers"] + pod.get("initContainers", []):
            # The preview's database provisioner (in the base's namespace) and the rollout gate
            # run no app settings, so they load no config at all.
            if not name.startswith(NO_APP_CONFIG):
                assert {"configMapRef": {"name": "record-config"}} in container["envFrom"]
            if name == "record-worker":
                continue
            assert "record-smtp" not in json.dumps(container), name


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_worker_may_reach_the_smtp_port(plans: dict[str, Plan], stack: str) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(plans[stack], "NetworkPolicy")}

    def egress_ports(name: str) -> set[int]:
        return {port["port"] for rule in policies[name].get("egress", []) for port in rule["ports"]}

    assert 587 in egress_ports("record-worker")
    assert 587 not in egress_ports("record-api")
    assert 587 not in egress_ports("record-migrate")


def test_worker_rolls_when_the_smtp_password_changes(plans: dict[str, Plan]) -> None:
    fingerprint = "record.dev/smtp-credentials"
    annotations = _workload(plans["prod"], "record-worker")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert len(annotations[fingerprint]) == 12
    assert annotations[fingerprint] != "[secret]"
    other = _workload(plans["preview"], "record-worker")["spec"]["template"]["metadata"]
    assert other["annotations"][fingerprint] != annotations[fingerprint]


def test_preview_shares_the_base_identity(plans: dict[str, Plan]) -> None:
    plan = plans["preview"]
    for absent in (
        "aws:ses/domainIdentity:DomainIdentity",
        "aws:ses/domainDkim:DomainDkim",
        "aws:iam/user:User",
        "aws:iam/accessKey:AccessKey",
        "aws:iam/userPolicy:UserPolicy",
    ):
        assert not plan.of_type(absent), absent


def test_mail_from_domain_and_its_records() -> None:
    plan = render("staging", {"record:mail": {"mailFromSubdomain": "bounce"}})
    mail_from = one(plan.of_type("aws:ses/mailFrom:MailFrom"))["inputs"]
    assert mail_from["domain"] == "staging.record.example.com"
    assert mail_from["mailFromDomain"] == "bounce.staging.record.example.com"
    assert mail_from["behaviorOnMxFailure"] == "UseDefaultValue"
    assert plan.outputs["mailDomain"] == "staging.record.example.com"


def test_dns_records_name_dkim_verification_and_mail_from() -> None:
    records = dns_records("example.org", REGION, "tok", ["a", "b", "c"], "bounce.example.org")
    assert records == [
        {"name": "_amazonses.example.org", "type": "TXT", "value": '"tok"'},
        {"name": "a._domainkey.example.org", "type": "CNAME", "value": "a.dkim.amazonses.com"},
        {"name": "b._domainkey.example.org", "type": "CNAME", "value": "b.dkim.amazonses.com"},
        {"name": "c._domainkey.example.org", "type": "CNAME", "value": "c.dkim.amazonses.com"},
        {
            "name": "bounce.example.org",
            "type": "MX",
            "value": f"10 feedback-smtp.{REGION}.amazonses.com",
        },
        {
            "name": "bounce.example.org",
            "type": "TXT",
            "value": '"v=spf1 include:amazonses.com ~all"',
        },
    ]
    assert len(dns_records("example.org", REGION, "tok", ["a", "b", "c"])) == 4


@pytest.mark.parametrize(
    ("stack", "overrides", "message"),
    [
        (
            "prod",
            {"record:mail": {"fromAddress": "no-reply@elsewhere.example.net"}},
            "mail.fromAddress must be an address at mail.domain (record.example.com)",
        ),
        ("prod", {"record:mail": {"domain": "not a domain"}}, "mail.domain must be a DNS name"),
        ("prod", {"record:mail": {"fromName": 'Evil" <x@y>'}}, "mail.fromName must be"),
        ("prod", {"record:mail": {"mailFromSubdomain": "a.b"}}, "one DNS label"),
        ("prod", {"record:mail": {"zoneId": "Z1"}}, "unknown keys ['zoneId']"),
        ("preview", {"record:mail": {"domain": "pr.example.com"}}, "not for a preview stack"),
    ],
)
def test_mail_config_is_validated(stack: str, overrides: dict[str, Any], message: str) -> None:
    escaped = message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ConfigError, match=escaped):
        render(stack, overrides)


# -- the policy as IAM sees it ---------------------------------------------------------------

DOMAIN = "record.example.com"
IDENTITY_ARN = f"arn:aws:ses:{REGION}:123456789012:identity/{DOMAIN}"


def _string_like(pattern: str | list[str], value: str) -> bool:
    """IAM StringLike: case-sensitive, ``*`` any run, ``?`` one character."""
    patterns = [pattern] if isinstance(pattern, str) else pattern
    return any(fnmatchcase(value, p) for p in patterns)


def _allowed(
    document: dict[str, Any], action: str, resource: str, from_address: str | None
) -> bool:
    """Actions and resources as moto's IAM evaluator sees them; moto ignores StringLike, so the
    condition (the only operator the policy uses, checked below) is evaluated here."""
    if IAMPolicy(json.dumps(document)).is_action_permitted(action, resource) is not (
        PermissionResult.PERMITTED
    ):
        return False
    for statement in document["Statement"]:
        for operator, keys in statement.get("Condition", {}).items():
            assert operator == "StringLike", operator
            for key, pattern in keys.items():
                assert key == "ses:FromAddress", key
                if from_address is None or not _string_like(pattern, from_address):
                    return False
    return True


@pytest.fixture
def smtp_user_policy() -> Any:
    """The generated policy, created in (moto's) IAM as the stack creates it: a user, its one
    inline policy, an access key. Returns the document as IAM gives it back."""
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        iam.create_user(UserName="record-prod-smtp", Path="/record/")
        # IAM refuses a malformed document (unknown operator, bad version) here.
        iam.put_user_policy(
            UserName="record-prod-smtp",
            PolicyName="record-prod-smtp-send",
            PolicyDocument=json.dumps(send_policy(IDENTITY_ARN, DOMAIN)),
        )
        iam.create_access_key(UserName="record-prod-smtp")
        assert iam.list_user_policies(UserName="record-prod-smtp")["PolicyNames"] == [
            "record-prod-smtp-send"
        ]
        assert (
            iam.list_attached_user_policies(UserName="record-prod-smtp")["AttachedPolicies"] == []
        )
        assert iam.list_groups_for_user(UserName="record-prod-smtp")["Groups"] == []
        stored = iam.get_user_policy(
            UserName="record-prod-smtp", PolicyName="record-prod-smtp-send"
        )["PolicyDocument"]
        yield stored if isinstance(stored, dict) else json.loads(stored)


def test_smtp_policy_is_exactly_send_as_the_identity(smtp_user_policy: dict[str, Any]) -> None:
    # Strict shape: one Allow statement, the two send actions, one resource, one condition.
    assert smtp_user_policy["Version"] == "2012-10-17"
    statement = one(smtp_user_policy["Statement"])
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == ["ses:SendEmail", "ses:SendRawEmail"]
    assert sorted(SEND_ACTIONS) == sorted(statement["Action"])
    assert statement["Resource"] == IDENTITY_ARN
    assert "*" not in statement["Resource"]
    assert statement["Condition"] == {"StringLike": {"ses:FromAddress": f"*@{DOMAIN}"}}
    assert not {"NotAction", "NotResource", "Principal"} & set(statement)


@pytest.mark.parametrize("action", ["ses:SendRawEmail", "ses:SendEmail"])
def test_smtp_policy_allows_sending_from_the_mail_domain(
    smtp_user_policy: dict[str, Any], action: str
) -> None:
    for sender in (f"no-reply@{DOMAIN}", f"team@{DOMAIN}"):
        assert _allowed(smtp_user_policy, action, IDENTITY_ARN, sender), sender


@pytest.mark.parametrize(
    ("action", "resource", "sender"),
    [
        # Another From domain, or a look-alike of ours.
        ("ses:SendRawEmail", IDENTITY_ARN, "no-reply@example.net"),
        ("ses:SendRawEmail", IDENTITY_ARN, f"no-reply@{DOMAIN}.example.net"),
        ("ses:SendRawEmail", IDENTITY_ARN, f"no-reply@mail.{DOMAIN}"),
        ("ses:SendRawEmail", IDENTITY_ARN, None),
        # Another identity in the account.
        ("ses:SendRawEmail", f"arn:aws:ses:{REGION}:123456789012:identity/other.org", None),
        ("ses:SendEmail", f"arn:aws:ses:{REGION}:123456789012:identity/x@{DOMAIN}", None),
        # Anything that is not sending.
        ("ses:SendTemplatedEmail", IDENTITY_ARN, f"no-reply@{DOMAIN}"),
        ("ses:SendBulkEmail", IDENTITY_ARN, f"no-reply@{DOMAIN}"),
        ("ses:VerifyDomainIdentity", IDENTITY_ARN, f"no-reply@{DOMAIN}"),
        ("ses:DeleteIdentity", IDENTITY_ARN, f"no-reply@{DOMAIN}"),
        ("ses:PutIdentityPolicy", IDENTITY_ARN, f"no-reply@{DOMAIN}"),
        ("ses:UpdateAccountSendingEnabled", "*", f"no-reply@{DOMAIN}"),
        ("iam:CreateAccessKey", "*", None),
        ("s3:GetObject", "*", None),
    ],
)
def test_smtp_policy_denies_everything_else(
    smtp_user_policy: dict[str, Any], action: str, resource: str, sender: str | None
) -> None:
    assert not _allowed(smtp_user_policy, action, resource, sender)
