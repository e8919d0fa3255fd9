async def test_recordings_empty_with_key_and_401_without(client, org_a):
    response = await client.get("/api/recordings", headers=org_a.auth())
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}
    response = await client.get("/api/recordings")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_openapi_declares_bearer_auth_where_it_is_needed(client):
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    public = {
        ("post", "/api/auth/signup"),
        ("post", "/api/auth/login"),
        # Mailed links: the token in the body is the credential.
        ("post", "/api/auth/password-reset"),
        ("post", "/api/auth/password-reset/confirm"),
        ("get", "/livez"),
        ("get", "/readyz"),
        ("get", "/api/health"),  # readiness through the public URL
        ("get", "/s/{share_id}"),  # share links: the link is the credential
        ("get", "/s/{share_id}/media"),
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            secured = bool(operation.get("security"))
            assert secured == ((method, path) not in public), (method, path)
