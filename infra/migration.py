"""The migration Job: ``alembic upgrade head`` before any API or worker pod of a new build.

A base stack's Job first bootstraps its database and login roles (``infra/db_bootstrap.py``, an
init container that reads the RDS master secret); a preview's only migrates, as its owner, after
the base's provisioner made its database (``infra/provisioner.py``).

The Job's name is a digest of everything it runs with: its whole manifest (image, labels,
DB_HOST, the containers the program writes) and a fingerprint of the stack's database secret,
from which every login's password derives. A Job is immutable, so any change to what Pulumi
declares replaces it; under one fixed name the new Job (created before the old is deleted)
would collide with the old. And a rotated ``dbAppPassword`` rewrites the DATABASE_URL Secrets
but not the manifest: without the fingerprint no Job would run the bootstrap that sets the new
passwords in PostgreSQL, and pods would log in with passwords it never heard of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from infra.pods import DB_SECRETS, SECRETS_AS_ENV_SKIP, Pods, child_options, fingerprint
from infra.rollout import spec_fingerprint

# Index builds on a large table take minutes (1M x 384 HNSW: 382 s); Kubernetes stops the
# migration Job after this long, and Pulumi waits a little longer so that it reports the Job's
# own failure (DeadlineExceeded) rather than a timeout of its own while the Job still runs.
MIGRATION_DEADLINE_SECONDS = 3600
MIGRATION_AWAIT_MARGIN_SECONDS = 300


@dataclass
class MigrationJobArgs:
    pods: Pods
    provider: pulumi.ProviderResource
    # The namespace, the settings and the database Secrets the Job reads.
    depends_on: list[pulumi.Resource]
    db_host: pulumi.Input[str]
    db_port: pulumi.Input[int]
    db_name: str
    db_app_user: str
    # None on a preview: no bootstrap init container (see the module's docstring).
    db_master_secret_arn: pulumi.Input[str] | None
    # The stack's database secret (dbAppPassword) the logins' passwords derive from: its
    # fingerprint is part of the Job's name, so a rotation runs the bootstrap again.
    db_secret: pulumi.Input[str] | None
    # The component that parented the Job before the split (Workloads), for its alias.
    old_parent: pulumi.Resource | None = None


class MigrationJob(pulumi.ComponentResource):
    job: pulumi.CustomResource

    def __init__(
        self, name: str, args: MigrationJobArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("record:infra:MigrationJob", name, None, opts)
        self.args = args
        if args.db_secret is None:
            raise ValueError("workloads.db_app_password: the logins' passwords derive from it")
        awaited = f"{MIGRATION_DEADLINE_SECONDS + MIGRATION_AWAIT_MARGIN_SECONDS}s"
        self.job = args.pods.apply(
            "migrate",
            self._manifest(job_name(self._manifest(""), args.db_secret)),
            pulumi.ResourceOptions.merge(
                child_options(self, args.provider, args.depends_on, args.old_parent),
                pulumi.ResourceOptions(
                    # The new Job (a new name, see above) runs before the old one goes.
                    delete_before_replace=False,
                    custom_timeouts=pulumi.CustomTimeouts(create=awaited, update=awaited),
                ),
            ),
        )
        self.register_outputs({"job": self.job.id})

    def _manifest(self, name: pulumi.Input[str]) -> dict[str, Any]:
        a, pods = self.args, self.args.pods
        bootstrap_env = [
            {"name": "DB_HOST", "value": a.db_host},
            {"name": "DB_PORT", "value": pulumi.Output.from_input(a.db_port).apply(str)},
            {"name": "DB_NAME", "value": a.db_name},
            {"name": "DB_OWNER_USER", "value": a.db_app_user},
            {"name": "DB_MASTER_SECRET_ARN", "value": a.db_master_secret_arn},
        ]
        bootstrap = pods.container(
            "db-bootstrap",
            ["python", "-m", "infra.db_bootstrap"],
            cpu=("100m", "500m"),
            memory=("128Mi", "256Mi"),
            db_secret=DB_SECRETS["migrate"],
            env=bootstrap_env,
        )
        # alembic upgrade head: creates the pgvector extension, tables and the HNSW / GIN
        # indexes. On a large table build those out of band first (DEPLOYMENT.md).
        migrate = pods.container(
            "migrate",
            ["record", "db", "upgrade"],
            cpu=("250m", "2"),
            memory=("512Mi", "2Gi"),
            db_secret=DB_SECRETS["migrate"],
        )
        init = {"initContainers": [bootstrap]} if a.db_master_secret_arn is not None else {}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": pods.meta(name, "migrate", {"checkov.io/skip1": SECRETS_AS_ENV_SKIP}),
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": MIGRATION_DEADLINE_SECONDS,
                "template": pods.pod("migrate", [migrate], **init, restartPolicy="Never"),
            },
        }


def job_name(manifest: dict[str, Any], db_secret: pulumi.Input[str]) -> pulumi.Output[str]:
    """``record-migrate-<digest>``: of the manifest (written without its name) and of the
    passwords' secret. Not secret itself: a digest of a fingerprint says nothing of it."""
    digest = pulumi.Output.all(pulumi.Output.from_input(manifest), fingerprint(db_secret)).apply(
        lambda parts: spec_fingerprint({"job": parts[0], "passwords": parts[1]})
    )
    return pulumi.Output.concat("record-migrate-", pulumi.Output.unsecret(digest))
