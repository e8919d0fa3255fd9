"""What a deleted org leaves outside PostgreSQL, deleted: its objects and its cached values.

The org's rows go with it in the request that deletes it (every table cascades from ``orgs``);
that request defers this job in the same transaction, with the org's id as its only argument.
Every step is idempotent: a retry, or the second pass, finds less or nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import structlog
from redis.asyncio import Redis

from app.kit.storage import ObjectStore, org_prefixes
from app.orgs import service as orgs
from worker.pipeline import PermanentError, PipelineDeps

log = structlog.stdlib.get_logger(__name__)

# Keys per SCAN call and per UNLINK: big enough to walk a large keyspace in few round trips,
# small enough that no single call holds Valkey for long.
SCAN_BATCH = 500


class OrgStillExists(PermanentError):
    """The job was asked to purge an org that is still there: a bug, never retried."""


@dataclass(frozen=True)
class OrgPurged:
    objects: int
    uploads_aborted: int
    cache_keys: int


async def purge_org(deps: PipelineDeps, org_id: UUID) -> OrgPurged:
    async with deps.db.transaction(org_id=org_id) as conn:
        if await orgs.org_exists(conn, org_id):
            raise OrgStillExists(f"org {org_id} still exists; its objects stay")
    objects, aborted = await delete_objects(deps.store, org_id)
    cache_keys = await forget_cached(deps.redis, org_id, deps.settings.redis_key_prefix)
    purged = OrgPurged(objects=objects, uploads_aborted=aborted, cache_keys=cache_keys)
    log.info(
        "org purged",
        org_id=str(org_id),
        objects=purged.objects,
        uploads_aborted=purged.uploads_aborted,
        cache_keys=purged.cache_keys,
    )
    return purged


async def delete_objects(store: ObjectStore, org_id: UUID) -> tuple[int, int]:
    objects = aborted = 0
    for prefix in org_prefixes(org_id):
        purged = await store.delete_prefix(prefix)
        objects += purged.objects
        aborted += purged.uploads_aborted
    return objects, aborted


async def forget_cached(redis: Redis, org_id: UUID, key_prefix: str = "") -> int:
    """Delete every Valkey key that names the org: its search answers and transcripts
    (``search:{org}``, ``transcript:{org/recording}``), transcription pieces, embeddings of
    its texts (``emb:…:org:…``) and its rate-limit counters. A cache retired by version alone
    would keep the values (a transcript's text, say) until their TTL; matching the id finds
    them all without this module knowing each cache's key format, and an org's UUID names
    nothing else. SCAN walks the whole keyspace in small steps, so this is for a job, never
    a request; on a Redis Cluster it would have to walk every primary. Only keys under
    ``key_prefix`` (REDIS_KEY_PREFIX): a preview's Valkey user may touch nothing else."""
    removed = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{key_prefix}*{org_id}*", count=SCAN_BATCH):
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            removed += await redis.unlink(*batch)
            batch = []
    if batch:
        removed += await redis.unlink(*batch)
    return removed
