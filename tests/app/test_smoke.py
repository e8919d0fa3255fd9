async def test_recordings_empty_with_key_and_401_without(client, org_a):
    response = await client.get("/api/recordings", headers=org_a.auth())
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}
    response = await client.get("/api/recordings")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]
