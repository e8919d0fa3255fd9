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


# /api/health: the readiness a client outside the cluster can reach (the ingress routes /api,
# never /readyz), without the operators' details.


async def test_public_health_ready_says_only_its_status(client):
    response = await client.get("/api/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready"}


async def test_public_health_not_ready_is_a_problem_without_internals(client, settings):
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    response = await client.get("/api/health")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["code"] == "not_ready"
    assert body["request_id"] == response.headers["x-request-id"]
    # No schema revisions, pool sizes or error text through the public URL.
    assert "checks" not in body
    assert "older" not in response.text
    assert "upgrade" not in response.text


async def test_public_health_degraded_without_redis(app, client):
    from app.kit.redis import create_redis

    services = app.state.services
    original = services.redis
    services.redis = create_redis("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        response = await client.get("/api/health")
    finally:
        await services.redis.aclose()
        services.redis = original
    assert response.status_code == 200
    assert response.json() == {"status": "degraded"}


async def test_public_health_reuses_its_answer_within_the_ttl(app, client, monkeypatch):
    from app.health import routes

    calls = 0
    checks = routes._checks

    async def counted(services):
        nonlocal calls
        calls += 1
        return await checks(services)

    monkeypatch.setattr(routes, "_checks", counted)
    for _ in range(3):
        assert (await client.get("/api/health")).status_code == 200
    assert calls == 1
    monkeypatch.setattr(routes, "PUBLIC_HEALTH_TTL", 0.0)
    app.state.public_health = None
    for _ in range(2):
        assert (await client.get("/api/health")).status_code == 200
    assert calls == 3


async def test_public_health_is_in_the_openapi_document_unauthenticated(client):
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/api/health"]["get"]
    assert not operation.get("security")
    assert {"200", "503"} <= set(operation["responses"])


async def test_public_health_counts_against_the_anonymous_limit(settings):
    import httpx
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    application = create_app(settings.model_copy(update={"ratelimit_anonymous": "2/60"}))
    async with LifespanManager(application) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("198.51.100.77", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            answers = [(await http.get("/api/health")).status_code for _ in range(3)]
            limited = await http.get("/api/health")
    assert answers == [200, 200, 429]
    assert limited.headers["x-ratelimit-limit"] == "2"
