"""Embeddings through a Redis cache: the worker's chunks and the API's search queries share it.

A vector is cached under its *space*, its org and the text's sha256. The space is the server,
the model name and the dimensions together: a model name alone is not enough, because the local
model server answers to OpenAI's names with its own model, and switching ``OPENAI_BASE_URL``
must not serve one space's vectors as the other's. The org is there so that how fast a text is
embedded tells no org what another one said or searched for. The cache is an optimisation:
when Redis fails, everything is embedded afresh.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Self

import numpy as np
import structlog
from redis.asyncio import Redis

from app.ai.clients import ModelClients
from app.kit.cache import RedisUnavailable, guarded
from app.kit.metrics import CACHE_REQUESTS
from app.settings import Settings

log = structlog.stdlib.get_logger(__name__)


def cache_space(models: ModelClients, base_url: str) -> str:
    config = models.config
    server = hashlib.sha256(base_url.encode()).hexdigest()[:12]
    return f"{config.embedding_model}:{config.embedding_dimensions}:{server}"


def cache_key(space: str, text: str, scope: str = "", prefix: str = "") -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{prefix}emb:v3:{space}:{scope}:{digest}"


class CachedEmbeddings:
    def __init__(
        self,
        models: ModelClients,
        redis: Redis,
        *,
        base_url: str,
        ttl_seconds: int,
        batch_size: int,
        cache_name: str = "embeddings",
        scope: str = "",
        key_prefix: str = "",
    ) -> None:
        self.models = models
        self.key_prefix = key_prefix  # REDIS_KEY_PREFIX
        # Whose texts (an org): one org's cache hits must not tell it what another org said
        # or searched for (a hit answers in milliseconds, a miss in tens).
        self.scope = scope
        self.redis = redis
        self.space = cache_space(models, base_url)
        self.dims = models.config.embedding_dimensions
        self.ttl_seconds = ttl_seconds
        self.batch_size = batch_size
        self.cache_name = cache_name  # the metric's ``cache`` label

    @classmethod
    def from_settings(
        cls,
        models: ModelClients,
        redis: Redis,
        settings: Settings,
        *,
        cache_name: str = "embeddings",
        scope: str = "",
    ) -> Self:
        return cls(
            models,
            redis,
            base_url=str(settings.openai_base_url),
            ttl_seconds=settings.embedding_cache_ttl_seconds,
            batch_size=settings.embedding_batch_size,
            cache_name=cache_name,
            scope=scope,
            key_prefix=settings.redis_key_prefix,
        )

    def key(self, text: str) -> str:
        return cache_key(self.space, text, self.scope, self.key_prefix)

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Embeddings for ``texts``, in order, from the cache where it has them."""
        keys = [self.key(text) for text in texts]
        cached: list[bytes | None] = [None] * len(texts)
        try:
            if keys:
                raws = await guarded(self.redis, lambda: self.redis.mget(keys))
                cached = [raw if isinstance(raw, bytes) else None for raw in raws]
        except RedisUnavailable as exc:
            if exc.asked:  # a skip: the failure that opened the breaker was logged
                log.warning("embedding cache unavailable", error=str(exc))
        vectors: list[np.ndarray | None] = [
            # A value of the wrong size is not ours to trust (another writer, a truncated value).
            np.frombuffer(raw, dtype=np.float32)
            if raw is not None and len(raw) == 4 * self.dims
            else None
            for raw in cached
        ]
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        CACHE_REQUESTS.labels(self.cache_name, "hit").inc(len(texts) - len(missing))
        CACHE_REQUESTS.labels(self.cache_name, "miss").inc(len(missing))
        for start in range(0, len(missing), self.batch_size):
            indexes = missing[start : start + self.batch_size]
            result = await self.models.embeddings.embed([texts[i] for i in indexes])
            fresh = {
                keys[i]: np.asarray(vector, dtype=np.float32)
                for i, vector in zip(indexes, result.vectors, strict=True)
            }
            for i in indexes:
                vectors[i] = fresh[keys[i]]
            try:
                await guarded(self.redis, functools.partial(self._store, fresh))
            except RedisUnavailable as exc:
                if exc.asked:
                    log.warning("embedding cache not written", error=str(exc))
        return [vector for vector in vectors if vector is not None]

    async def _store(self, fresh: dict[str, np.ndarray]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, vector in fresh.items():
                pipe.set(key, vector.tobytes(), ex=self.ttl_seconds)
            await pipe.execute()

    async def embed_one(self, text: str) -> np.ndarray:
        (vector,) = await self.embed([text])
        return vector
