"""Search rules: plan, fuse, cache, and never hold a database connection across a model call.

A search is three short steps: check the recordings it names (one short transaction, only when
it names some), embed the query (an HTTP call, no connection held; the embedding is cached),
then rank and fetch the hits in one transaction.

Answers are cached per org for ``SEARCH_CACHE_TTL_SECONDS`` as ranked chunk ids and scores, not
as hits: the text and the recording's title are read afresh every time, so a renamed recording
shows its new title and a deleted one never comes back from the cache. The org's cache version
(``app.kit.cache.VersionedCache``), replaced whenever the org's chunks change, retires cached
answers at once: a recording that has just become ready is found by the next search.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import anyio
import numpy as np
import structlog
from redis.asyncio import Redis

from app.ai.clients import models_of
from app.ai.embedding_cache import CachedEmbeddings
from app.auth.principal import Principal
from app.kit.cache import LocalCache, VersionedCache
from app.kit.db import Conn
from app.kit.errors import ExternalServiceError, NotFoundError
from app.kit.metrics import SEARCH_PLANS
from app.kit.services import Services
from app.search import repository, spaces
from app.search.repository import Candidate
from app.search.schemas import SearchHit, SearchIn, SearchMode, SearchOut
from app.settings import Settings

log = structlog.stdlib.get_logger(__name__)

# A query embeds in tens of milliseconds. A model server silent for this long is hung or
# unreachable: the model client's own timeout and retries would hold the search for minutes,
# where hybrid search can answer by words at once (tests/reliability/test_model_server_down.py).
QUERY_EMBED_TIMEOUT = 2.0
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al.): 1 / (60 + rank)
CACHE_VERSION = "v1"


def candidates_wanted(limit: int, mode: SearchMode) -> int:
    """How many each ranking contributes: more than shown when two rankings are fused."""
    return limit if mode is not SearchMode.hybrid else min(max(3 * limit, 20), 150)


def fuse(rankings: Sequence[Sequence[Candidate]], limit: int) -> list[Candidate]:
    """Reciprocal rank fusion: each ranking adds 1 / (RRF_K + rank) to a chunk's score."""
    scores: dict[UUID, float] = {}
    for ranking in rankings:
        for rank, candidate in enumerate(ranking, start=1):
            scores[candidate.chunk_id] = scores.get(candidate.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    ordered = sorted(scores.items(), key=lambda item: (-item[1], str(item[0])))
    return [Candidate(chunk_id, score) for chunk_id, score in ordered[:limit]]


# -- the cache -----------------------------------------------------------------------------------


def answer_cache(redis: Redis, settings: Settings) -> VersionedCache:
    """Ranked answers per org (the scope): retired together whenever the org's chunks change."""
    return VersionedCache(
        redis,
        "search",
        ttl_seconds=settings.search_cache_ttl_seconds,
        key_prefix=settings.redis_key_prefix,
    )


def _fingerprint(query: str, body: SearchIn, space: str) -> str:
    spec = {
        "query": query,
        "mode": body.mode.value,
        "limit": body.limit,
        "recording_ids": sorted(str(i) for i in body.recording_ids or []),
        "space": space,  # another embedding model ranks differently
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"{CACHE_VERSION}:{digest}"


async def invalidate(redis: Redis, org_id: UUID, settings: Settings) -> None:
    """Retire the org's cached answers: call after its chunks change (and commit). A failure is
    logged, not raised: the answers then expire by their TTL."""
    await answer_cache(redis, settings).invalidate(str(org_id))


def _decode(raw: bytes) -> tuple[SearchMode, list[Candidate]] | None:
    try:
        stored: Any = json.loads(raw)
        return SearchMode(stored["mode"]), [
            Candidate(UUID(chunk_id), float(score)) for chunk_id, score in stored["hits"]
        ]
    except (LookupError, ValueError, TypeError):
        return None


# In-process: the planner statistics behind each search's plan change only with ANALYZE.
CHUNK_STATS = LocalCache("search_stats", maxsize=10_000, ttl_seconds=60)


# -- the search ----------------------------------------------------------------------------------


async def nearest(
    conn: Conn,
    settings: Settings,
    org_id: UUID,
    vector: np.ndarray,
    want: int,
    *,
    recording_ids: Sequence[UUID] | None,
    relation: str = spaces.LEGACY_RELATION,
) -> list[Candidate]:
    """The scope's ``want`` nearest chunks, by the plan its size calls for (repository doc),
    among the vectors in ``relation`` (the active embedding space's)."""
    if recording_ids:  # at most 100 recordings: a bounded scan, always exact
        SEARCH_PLANS.labels("exact").inc()
        return await repository.nearest_exact(
            conn, org_id, vector, want, recording_ids, relation=relation
        )
    stats = await CHUNK_STATS.get_or_load(org_id, lambda: repository.chunk_stats(conn))
    plan = repository.choose_plan(
        stats, want, exact_max=max(settings.search_exact_max_chunks, want)
    )
    if plan == "ann" and stats.org_share is not None:
        ef = repository.ef_search_for(stats, want)
        found = await repository.nearest_ann(
            conn, org_id, vector, want, ef_search=ef, relation=relation
        )
        if len(found) >= want:
            SEARCH_PLANS.labels("ann").inc()
            return found
        plan = "ann_fallback"
    SEARCH_PLANS.labels(plan).inc()
    return await repository.nearest_exact(
        conn, org_id, vector, want, recording_ids, relation=relation
    )


async def search(services: Services, principal: Principal, body: SearchIn) -> SearchOut:
    return await find(services, principal.org, body)


async def find(services: Services, org_id: UUID, body: SearchIn) -> SearchOut:
    """The search for an org, after checking the recordings it names are the org's (404)."""
    if body.recording_ids:
        named = sorted(set(body.recording_ids))
        async with services.db.transaction(org_id=org_id) as conn:
            known = await repository.existing_recordings(conn, org_id, named)
        if missing := [str(i) for i in named if i not in known]:
            raise NotFoundError(f"No such recording in this org: {', '.join(missing[:5])}.")
    return await find_checked(services, org_id, body)


async def find_checked(services: Services, org_id: UUID, body: SearchIn) -> SearchOut:
    """The search itself, for recordings already checked (chat checks its own): one that is
    gone meanwhile simply has no passages left."""
    settings = services.settings
    query = " ".join(body.query.split())
    recording_ids = sorted(set(body.recording_ids)) if body.recording_ids else None
    space = await ACTIVE_SPACE.get_or_load("active", lambda: _active_space(services))
    embeddings = _embeddings_in(services, space, org_id)
    cache = answer_cache(services.redis, settings)
    stored, ticket = await cache.read(str(org_id), _fingerprint(query, body, embeddings.space))
    cached = _decode(stored) if stored is not None else None
    if cached is not None:
        mode, ranked = cached
    else:
        for attempt in range(3):
            try:
                mode, ranked = await _rank(
                    services,
                    embeddings,
                    org_id,
                    query,
                    body,
                    space=space,
                    recording_ids=recording_ids,
                )
                break
            except SpaceSwitched as switched:  # a re-embed switched meanwhile: in the new one
                if attempt == 2:
                    raise
                space = switched.now
                embeddings = _embeddings_in(services, space, org_id)
        if mode is body.mode:  # a degraded answer is not kept
            hits = [[str(c.chunk_id), c.score] for c in ranked]
            await cache.write(ticket, json.dumps({"mode": mode.value, "hits": hits}).encode())

    async with services.db.transaction(org_id=org_id) as conn:
        rows = await repository.hits(conn, org_id, [c.chunk_id for c in ranked])
    results = [
        SearchHit.model_validate({**rows[c.chunk_id], "score": c.score})
        for c in ranked
        if c.chunk_id in rows
    ]
    return SearchOut(results=results, mode=mode)


# In-process for a few seconds: which space is active changes once per re-embed, and every
# ranking checks it again in its own transaction (``SpaceSwitched``).
ACTIVE_SPACE = LocalCache("embedding_space", maxsize=1, ttl_seconds=5)


class SpaceSwitched(Exception):
    """The active embedding space changed between embedding the query and ranking."""

    def __init__(self, now: spaces.Space) -> None:
        super().__init__(f"embedding space now generation {now.generation}")
        self.now = now


async def _active_space(services: Services) -> spaces.Space:
    async with services.db.transaction() as conn:
        return await spaces.active(conn)


def _embeddings_in(services: Services, space: spaces.Space, org_id: UUID) -> CachedEmbeddings:
    models = spaces.models_for(models_of(services), space, services.settings)
    return CachedEmbeddings.from_settings(
        models, services.redis, services.settings, scope=str(org_id)
    )


async def _embed_query(embeddings: CachedEmbeddings, query: str) -> np.ndarray:
    """The query's embedding, or ExternalServiceError once QUERY_EMBED_TIMEOUT has passed."""
    try:
        with anyio.fail_after(QUERY_EMBED_TIMEOUT):
            return await embeddings.embed_one(query)
    except TimeoutError as exc:
        raise ExternalServiceError(
            "model server", f"no query embedding within {QUERY_EMBED_TIMEOUT}s"
        ) from exc


async def _rank(
    services: Services,
    embeddings: CachedEmbeddings,
    org_id: UUID,
    query: str,
    body: SearchIn,
    *,
    space: spaces.Space,
    recording_ids: Sequence[UUID] | None,
) -> tuple[SearchMode, list[Candidate]]:
    mode = body.mode
    want = candidates_wanted(body.limit, mode)
    vector: np.ndarray | None = None
    if mode is not SearchMode.keyword:
        try:
            vector = await _embed_query(embeddings, query)
        except ExternalServiceError as exc:
            if mode is SearchMode.vector:
                # The operator's detail (which server, which setting) goes to the log; the
                # caller learns what it can do.
                log.warning("search by meaning unavailable", error=exc.detail)
                raise ExternalServiceError(
                    exc.service,
                    "Search by meaning is unavailable right now: try again, or search by words "
                    '(mode "keyword").',
                ) from exc
            # Hybrid still answers by words; the response says so.
            log.warning("search by meaning unavailable, answering by words", error=str(exc))
            mode = SearchMode.keyword
    async with services.db.transaction(org_id=org_id) as conn:
        # Read in this transaction, the space's table cannot be dropped before it ends: the
        # re-embed drops the old one only once it holds embedding_spaces exclusively.
        if vector is not None and (now := await spaces.active(conn)) != space:
            raise SpaceSwitched(now)
        by_meaning = (
            await nearest(
                conn,
                services.settings,
                org_id,
                vector,
                want,
                recording_ids=recording_ids,
                relation=space.relation,
            )
            if vector is not None
            else []
        )
        by_words = (
            await repository.by_words(conn, org_id, query, want, recording_ids)
            if mode is not SearchMode.vector
            else []
        )
    if mode is SearchMode.hybrid:
        return mode, fuse([by_meaning, by_words], body.limit)
    return mode, (by_meaning if mode is SearchMode.vector else by_words)[: body.limit]
