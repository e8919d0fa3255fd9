"""/livez and /readyz."""

from __future__ import annotations

import psycopg


async def test_livez(client):
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_readyz_ready(client):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["revision"]
    assert body["checks"]["redis"]["ok"] is True


async def test_readyz_not_ready_when_schema_behind(client, settings):
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    response = await client.get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["database"]
    assert check["ok"] is False
    assert "record db upgrade" in check["error"]


async def test_readyz_degraded_without_redis(app, client):
    # Valkey is not needed to serve (the limiter fails open): tests/reliability has the rest.
    from app.kit.redis import create_redis

    services = app.state.services
    original = services.redis
    services.redis = create_redis("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        response = await client.get("/readyz")
    finally:
        await services.redis.aclose()
        services.redis = original
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["redis"]["ok"] is False
    assert response.json()["checks"]["database"]["ok"] is True


async def test_metrics_endpoint(client):
    await client.get("/livez")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert 'record_http_requests_total{method="GET",route="/livez",status="200"}' in response.text
