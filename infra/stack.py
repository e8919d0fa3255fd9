"""The program: a list of blocks and the wiring between them. ``__main__`` calls ``build``."""

from __future__ import annotations

from typing import Any, cast

import pulumi
import pulumi_aws as aws

from infra.api import PREVIEW_GROUP_ORDER, IngressGroup
from infra.cache import Cache, CacheArgs
from infra.cluster import PREVIEW_GROUP, Cluster, ClusterArgs
from infra.config import StackConfig
from infra.database import Database, DatabaseArgs
from infra.identity import Identity, IdentityArgs
from infra.images import IMAGES, Images, ImagesArgs, Registry
from infra.mail import Mail, MailArgs, MailSettings
from infra.monitoring import Monitoring, MonitoringArgs
from infra.network import Network, NetworkArgs
from infra.preview import Preview, PreviewArgs
from infra.provisioner import DbProvisioner, DbProvisionerArgs, PreviewDatabase, PreviewDatabaseArgs
from infra.runner import Runner, RunnerArgs
from infra.storage import RECORDINGS_PREFIX, Storage, StorageArgs
from infra.workloads import Workloads, WorkloadsArgs


def build(config: StackConfig) -> dict[str, Any]:
    """Declares every resource of the stack; returns the stack outputs it exported."""
    if config.preview is not None:
        return _build_preview(config)
    return _build_base(config)


def _build_base(config: StackConfig) -> dict[str, Any]:
    p = config.project
    prefix = p.prefix
    if config.cluster.mode == "eks":
        network = Network(prefix, NetworkArgs(project=p, network=config.network))
        vpc_id: pulumi.Input[str] = network.vpc_id
        vpc_cidr = network.vpc_cidr
        private_subnets: list[pulumi.Input[str]] = list(network.private_subnet_ids)
    else:
        assert config.cluster.vpc_id
        assert config.cluster.vpc_cidr
        vpc_id = config.cluster.vpc_id
        vpc_cidr = config.cluster.vpc_cidr
        private_subnets = list(config.cluster.private_subnet_ids)

    topic_name = f"{prefix}-alerts"
    topic_arn = pulumi.Output.concat(
        "arn:aws:sns:",
        p.region,
        ":",
        aws.get_caller_identity_output().account_id,
        ":",
        topic_name,
    )
    cluster = Cluster(
        prefix,
        ClusterArgs(
            project=p,
            cluster=config.cluster,
            vpc_id=vpc_id,
            vpc_cidr=vpc_cidr,
            private_subnet_ids=private_subnets,
            install_argo_rollouts=config.rollout.canary,
            alertmanager_topic_arn=topic_arn,
        ),
    )
    # Where `pulumi up` runs when the endpoint is private: a runner of this stack's own.
    runner = None
    if config.cluster.deploy_from_vpc and config.cluster.runner_repository:
        runner = Runner(
            prefix,
            RunnerArgs(
                project=p,
                repository=config.cluster.runner_repository,
                vpc_id=vpc_id,
                private_subnet_ids=private_subnets,
                cluster_name=cluster.name,
                cluster_security_group_id=cluster.cluster_security_group_id,
                account_id=aws.get_caller_identity_output().account_id,
                actor_ids=config.cluster.runner_actor_ids,
            ),
        )
    storage_config = config.storage
    if config.previews is not None:
        # Previews upload from the browser straight to this bucket too, each from its own
        # host under the previews' domain (S3 allows one wildcard in an origin).
        origins = (*storage_config.cors_origins, f"https://*.{config.previews.domain}")
        storage_config = storage_config.model_copy(update={"cors_origins": origins})
    storage = Storage(prefix, StorageArgs(project=p, storage=storage_config))
    database = Database(
        prefix,
        DatabaseArgs(
            project=p,
            database=config.database,
            vpc_id=vpc_id,
            subnet_ids=private_subnets,
            client_security_group_id=cluster.cluster_security_group_id,
        ),
    )
    cache_token = config.workloads.cache_auth_token
    assert cache_token is not None
    cache = Cache(
        prefix,
        CacheArgs(
            project=p,
            cache=config.cache,
            vpc_id=vpc_id,
            subnet_ids=private_subnets,
            client_security_group_id=cluster.cluster_security_group_id,
            auth_token=cache_token,
        ),
    )
    assert config.mail is not None
    mail = Mail(prefix, MailArgs(project=p, mail=config.mail))
    namespace = prefix
    identity = Identity(
        prefix,
        IdentityArgs(
            project=p,
            namespace=namespace,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            bucket_arn=storage.bucket_arn,
            bucket_kms_key_arn=storage.kms_key_arn,
            object_prefix=RECORDINGS_PREFIX,
            db_master_secret_arn=database.master_secret_arn,
            db_secret_kms_key_arn=database.master_secret_kms_key_arn,
        ),
    )
    # The repositories live as long as the stack; previews push into them too.
    registry = Registry(prefix, p)
    images = Images(
        prefix,
        ImagesArgs(
            project=p,
            image=config.image,
            with_models=config.workloads.use_local_models,
            repository_urls=dict(registry.repository_urls),
            tag_prefix=prefix,
        ),
    )
    workloads = Workloads(
        prefix,
        WorkloadsArgs(
            project=p,
            workloads=config.workloads,
            rollout=config.rollout,
            namespace=namespace,
            provider=cluster.provider,
            vpc_cidr=vpc_cidr,
            db_host=database.address,
            db_port=database.port,
            db_name=config.database.name,
            db_app_user=config.database.app_user,
            db_master_secret_arn=database.master_secret_arn,
            cache_host=cache.primary_endpoint,
            cache_user=cache.app_user_name,
            cache_key_prefix="",
            bucket_name=storage.bucket_name,
            bucket_kms_key_arn=storage.kms_key_arn,
            object_prefix=RECORDINGS_PREFIX,
            api_role_arn=identity.api_role.arn,
            worker_role_arn=identity.worker_role.arn,
            migrate_role_arn=identity.migrate_role.arn if identity.migrate_role else None,
            mail=mail.settings,
            # CRDs (KEDA, Prometheus operator, Argo Rollouts) exist once the charts are in.
            depends_on=list(cluster.releases),
            api_image=images.refs["api"],
            models_image=images.refs.get("models"),
        ),
    )
    # Where previews get their databases made, by this stack's code (infra/provisioner.py).
    assert identity.provisioner_role is not None
    provisioner = DbProvisioner(
        prefix,
        DbProvisionerArgs(
            project=p,
            namespace=namespace,
            provider=cluster.provider,
            role_arn=identity.provisioner_role.arn,
            vpc_cidr=vpc_cidr,
            depends_on=[workloads],
            # Preview roles may then make previews' provisioner Jobs, with this stack's values.
            preview_group=PREVIEW_GROUP if config.cluster.preview_role_arns else None,
            api_image=images.refs["api"],
            db_host=database.address,
            db_port=database.port,
            db_master_secret_arn=database.master_secret_arn,
        ),
    )
    monitoring = Monitoring(
        prefix,
        MonitoringArgs(
            project=p,
            monitoring=config.monitoring,
            namespace=namespace,
            provider=cluster.provider,
            topic_name=topic_name,
            db_identifier=database.identifier,
            cache_cluster_ids=cache.member_cluster_ids,
            alertmanager_role=cluster.alertmanager_role,
            ingress=workloads.ingress,
            depends_on=[workloads, *cluster.releases],
        ),
    )
    outputs: dict[str, Any] = {
        "namespace": namespace,
        "url": config.workloads.public_url,
        "kubeconfig": cluster.kubeconfig,
        "vpcCidr": vpc_cidr,
        "dbAddress": database.address,
        "dbPort": database.port,
        "dbMasterSecretArn": database.master_secret_arn,
        "dbSecretKmsKeyArn": database.master_secret_kms_key_arn,
        "cacheEndpoint": cache.primary_endpoint,
        # Previews join this group with users of their own (infra/preview.py).
        "cacheUserGroupId": cache.user_group_id,
        "bucketName": storage.bucket_name,
        "bucketArn": storage.bucket_arn,
        "bucketKmsKeyArn": storage.kms_key_arn,
        "oidcProviderArn": cluster.oidc_provider_arn,
        "oidcIssuer": cluster.oidc_issuer,
        "alertTopicArn": monitoring.topic_arn,
        "mailDomain": config.mail.domain,
        "mailFrom": config.mail.mail_from,
        "mailIdentityArn": mail.identity.arn,
        # The records to add at the DNS provider (DEPLOYMENT.md, Outgoing mail).
        "mailDnsRecords": mail.dns_records,
        # For preview stacks, which send through this identity with these credentials.
        "smtpHost": mail.settings.smtp_host,
        "smtpUsername": mail.settings.smtp_username,
        "smtpPassword": mail.settings.smtp_password,
        # Where preview stacks push their builds (infra/images.py).
        **{f"{image}RepositoryUrl": registry.repository_urls[image] for image in IMAGES},
        # Where a preview's database provisioner Job runs, as whom, and with what
        # (infra/provisioner.py): never the base namespace, whose Secrets are the base's alone.
        "dbProvisionerNamespace": provisioner.namespace,
        "dbProvisionerServiceAccount": provisioner.service_account,
        "apiImage": images.refs["api"],
        # The ALB group previews' Ingresses join (infra/api.py): the ALB this stack's makes.
        "ingressGroup": prefix,
    }
    if config.previews is not None:
        outputs["previewDomain"] = config.previews.domain
        outputs["previewCertificateArn"] = config.previews.certificate_arn
    if runner is not None:
        # The `runs-on` label of deploy jobs; the deploy role's trust policy names this role.
        outputs["deployRunnerLabel"] = runner.label
        outputs["deployRunnerRoleArn"] = runner.role.arn
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs


def _build_preview(config: StackConfig) -> dict[str, Any]:
    p = config.project
    assert config.preview is not None
    prefix = p.prefix
    assert config.workloads.db_app_password is not None
    preview = Preview(
        prefix,
        PreviewArgs(project=p, preview=config.preview, secret=config.workloads.db_app_password),
    )
    base = preview.outputs
    identity = Identity(
        prefix,
        IdentityArgs(
            project=p,
            namespace=preview.namespace,
            oidc_provider_arn=base["oidcProviderArn"].apply(str),
            oidc_issuer=base["oidcIssuer"].apply(str),
            bucket_arn=base["bucketArn"].apply(str),
            bucket_kms_key_arn=base["bucketKmsKeyArn"].apply(str),
            object_prefix=preview.object_prefix,
            # No master secret: its pods run the pull request's code.
        ),
        opts=pulumi.ResourceOptions(parent=preview),
    )
    # Its database and roles, made in the base's provisioning namespace by the base's image and
    # role.
    database = PreviewDatabase(
        prefix,
        PreviewDatabaseArgs(
            project=p,
            slug=config.preview.slug,
            database=preview.database,
            owner=preview.db_owner,
            secret=config.workloads.db_app_password,
            namespace=base["dbProvisionerNamespace"].apply(str),
            service_account=base["dbProvisionerServiceAccount"].apply(str),
            base_image=base["apiImage"].apply(str),
            db_host=base["dbAddress"].apply(str),
            # A StackReference hands numbers back as floats (JSON).
            db_port=base["dbPort"].apply(lambda port: int(cast(float, port))),
            db_master_secret_arn=base["dbMasterSecretArn"].apply(str),
            provider=preview.provider,
            kubeconfig=base["kubeconfig"].apply(str),
            base_stack=config.preview.base_stack,
        ),
        opts=pulumi.ResourceOptions(parent=preview),
    )
    # Its own Valkey user's password, never the base's: one instance, a user per preview.
    workloads_cfg = config.workloads.model_copy(update={"cache_auth_token": preview.cache_password})
    # One SES identity per base stack, like its Valkey: previews mail From its domain with its
    # SMTP credentials (a rotation there reaches a preview at its next `pulumi up`).
    mail = MailSettings(
        mail_from=base["mailFrom"].apply(str),
        smtp_host=base["smtpHost"].apply(str),
        smtp_username=pulumi.Output.secret(base["smtpUsername"].apply(str)),
        smtp_password=pulumi.Output.secret(base["smtpPassword"].apply(str)),
    )
    # Into the base stack's repositories, tagged pr-<n>-<revision>, which its lifecycle keeps
    # apart from the base's own builds.
    images = Images(
        prefix,
        ImagesArgs(
            project=p,
            image=config.image,
            with_models=config.workloads.use_local_models,
            repository_urls={image: base[f"{image}RepositoryUrl"].apply(str) for image in IMAGES},
            tag_prefix=config.preview.slug,
        ),
        opts=pulumi.ResourceOptions(parent=preview),
    )
    Workloads(
        prefix,
        WorkloadsArgs(
            project=p,
            workloads=workloads_cfg,
            rollout=config.rollout,
            namespace=preview.namespace,
            provider=preview.provider,
            vpc_cidr=base["vpcCidr"].apply(str),
            db_host=base["dbAddress"].apply(str),
            db_port=base["dbPort"].apply(lambda port: int(cast(float, port))),
            db_name=preview.database,
            db_app_user=preview.db_owner,
            # No bootstrap step: the provisioner Job made the database and its roles.
            db_master_secret_arn=None,
            cache_host=base["cacheEndpoint"].apply(str),
            cache_user=preview.cache_user,
            cache_key_prefix=preview.cache_key_prefix,
            bucket_name=base["bucketName"].apply(str),
            bucket_kms_key_arn=base["bucketKmsKeyArn"].apply(str),
            object_prefix=preview.object_prefix,
            api_role_arn=identity.api_role.arn,
            worker_role_arn=identity.worker_role.arn,
            migrate_role_arn=None,
            mail=mail,
            # Nothing of the preview's runs before its database exists.
            # ... and on destroy, nothing of it runs while its database is dropped.
            depends_on=[database.job, database.resource],
            api_image=images.refs["api"],
            models_image=images.refs.get("models"),
            # A host rule on the base's ALB, not an ALB of its own.
            ingress_group=IngressGroup(
                name=base["ingressGroup"].apply(str),
                certificate_arn=base["previewCertificateArn"].apply(str),
                owns_load_balancer=False,
                order=PREVIEW_GROUP_ORDER,
            ),
        ),
        opts=pulumi.ResourceOptions(parent=preview),
    )
    outputs: dict[str, Any] = {
        "namespace": preview.namespace,
        "database": preview.database,
        "url": config.workloads.public_url,
    }
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
