"""POST /api/search: by meaning, by words and both; two orgs; roles; bad input; the cache."""

from __future__ import annotations

import uuid

import pytest

from tests.app.conftest import Tenant
from tests.app.retrieval import OFFSITE, PLANNING, CountingTransport, Seeder

EMBEDDINGS = "/v1/embeddings"


async def search(client, tenant: Tenant, token: str | None = None, **body):
    return await client.post("/api/search", json=body, headers=tenant.auth(token))


async def test_by_meaning_finds_the_passage_and_its_moment_within_the_org(
    client, models: CountingTransport, corpus, org_a: Tenant, org_b: Tenant
):
    planning_id, planning_chunks = corpus["planning"]
    # No word of the budget sentence but "review" is in this query: it is found by meaning.
    response = await search(
        client, org_a, query="who is getting the spending figures ready?", mode="vector", limit=3
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "vector"
    top = body["results"][0]
    assert top == {
        "recording_id": planning_id,
        "recording_title": "Planning sync",
        "chunk_id": planning_chunks[0],
        "text": PLANNING[0],
        "start": 0.0,
        "end": 5.0,
        "score": pytest.approx(top["score"]),
    }
    assert 0 < top["score"] <= 1
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)
    rival_id = corpus["rival"][0]
    assert rival_id not in {hit["recording_id"] for hit in body["results"]}

    # Org B sees its own sentence, and only its own.
    response = await search(client, org_b, query="who is getting the spending figures ready?")
    assert [hit["recording_id"] for hit in response.json()["results"]] == [rival_id]


async def test_by_words_and_by_both(client, models: CountingTransport, corpus, org_a: Tenant):
    offsite_id, offsite_chunks = corpus["offsite"]
    response = await search(client, org_a, query='"travel plans" Tom', mode="keyword")
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert [hit["chunk_id"] for hit in hits] == [offsite_chunks[1]]
    assert hits[0]["start"] == 5.0
    assert hits[0]["end"] == 10.0
    assert 0 < hits[0]["score"] < 1
    # Words org A never said match nothing; a word only org B said neither.
    for query in ("photosynthesis", "prepares -budget"):
        response = await search(client, org_a, query=query, mode="keyword")
        assert response.json()["results"] == []
    # Stop words alone are no query at all: nothing, not an error.
    response = await search(client, org_a, query="the and of", mode="keyword")
    assert response.status_code == 200
    assert response.json()["results"] == []
    assert models.calls[EMBEDDINGS] == 0  # keyword search never embeds

    # Hybrid: the passage both rankings put first is first; the other passages follow.
    response = await search(client, org_a, query="engineers to hire before launch", limit=5)
    body = response.json()
    assert body["mode"] == "hybrid"
    assert body["results"][0]["text"] == PLANNING[1]
    assert len(body["results"]) == len(PLANNING) + len(OFFSITE)  # every chunk ranked by meaning
    assert {hit["recording_id"] for hit in body["results"]} <= {
        corpus["planning"][0],
        offsite_id,
    }


async def test_recording_ids_narrow_the_search_and_other_orgs_ids_are_not_found(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    offsite_id, _ = corpus["offsite"]
    response = await search(
        client, org_a, query="budget review", mode="vector", recording_ids=[offsite_id]
    )
    assert response.status_code == 200, response.text
    assert {hit["recording_id"] for hit in response.json()["results"]} == {offsite_id}

    for foreign in (corpus["rival"][0], str(uuid.uuid4())):
        response = await search(client, org_a, query="budget", recording_ids=[offsite_id, foreign])
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert foreign in response.json()["detail"]


async def test_every_role_searches(client, models: CountingTransport, corpus, org_a: Tenant):
    for role in ("reader", "contributor", "admin", "owner"):
        key = await org_a.key(role)
        response = await search(client, org_a, key, query="budget", mode="keyword")
        assert response.status_code == 200, (role, response.text)
        assert response.json()["results"][0]["text"] == PLANNING[0]
    _user, session = await org_a.member("reader")
    response = await client.post(
        "/api/search", json={"query": "budget"}, headers=org_a.session_auth(session)
    )
    assert response.status_code == 200, response.text
    response = await client.post("/api/search", json={"query": "budget"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "   "},
        {"query": "x" * 1001},
        {"query": "budget", "limit": 0},
        {"query": "budget", "limit": 51},
        {"query": "budget", "mode": "fuzzy"},
        {"query": "budget", "recording_ids": []},
        {"query": "budget", "recording_ids": ["not-a-uuid"]},
        {"query": "budget", "recording_ids": [str(uuid.uuid4()) for _ in range(101)]},
        {"query": "budget", "org_id": str(uuid.uuid4())},
        {"query": ["budget"]},
        {"query": "budget\u0000review"},
    ],
)
async def test_bad_searches_are_problems(client, models: CountingTransport, org_a: Tenant, body):
    response = await client.post("/api/search", json=body, headers=org_a.auth())
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert models.calls[EMBEDDINGS] == 0


async def test_answers_are_cached_but_never_stale(
    client, models: CountingTransport, corpus, seeder: Seeder, org_a: Tenant, app
):
    planning_id, _ = corpus["planning"]
    query = {"query": "budget review", "mode": "hybrid", "limit": 10}
    first = (await search(client, org_a, **query)).json()
    assert models.calls[EMBEDDINGS] == 1
    again = (await search(client, org_a, **query)).json()
    assert again == first
    assert models.calls[EMBEDDINGS] == 1  # nothing embedded or ranked again

    # A rename shows at once: hits are read afresh, only the ranking is cached.
    response = await client.patch(
        f"/api/recordings/{planning_id}", json={"title": "Budget week"}, headers=org_a.auth()
    )
    assert response.status_code == 200
    renamed = (await search(client, org_a, **query)).json()
    assert {h["recording_title"] for h in renamed["results"] if h["recording_id"] == planning_id}
    assert all(
        h["recording_title"] == "Budget week"
        for h in renamed["results"]
        if h["recording_id"] == planning_id
    )

    # A new recording is found by the next search (the worker retires the org's answers).
    new_id, _ = await seeder.recording(org_a, "Finance", ["The budget review moved to Monday."])
    found = (await search(client, org_a, **query)).json()
    assert new_id in {h["recording_id"] for h in found["results"]}

    # A deleted recording never comes back, not even from the cache, which it retires.
    generation_key = f"search:{{{org_a.org_id}}}:gen"
    generation = await app.state.services.redis.get(generation_key)
    response = await client.delete(f"/api/recordings/{planning_id}", headers=org_a.auth())
    assert response.status_code == 204
    assert await app.state.services.redis.get(generation_key) not in (None, generation)
    after = (await search(client, org_a, **query)).json()
    assert planning_id not in {h["recording_id"] for h in after["results"]}
    assert after["results"]


async def test_a_deleted_recording_is_dropped_even_from_an_answer_cached_before(
    client, models: CountingTransport, corpus, org_a: Tenant, app
):
    """Even if the cache is not told (Redis failing at the time), hits are re-read from the
    database: a deleted recording's passages cannot be served."""
    planning_id, _ = corpus["planning"]
    query = {"query": "budget review", "mode": "vector"}
    before = (await search(client, org_a, **query)).json()
    assert planning_id in {h["recording_id"] for h in before["results"]}
    services = app.state.services
    generation = await services.redis.get(f"search:{{{org_a.org_id}}}:gen")
    response = await client.delete(f"/api/recordings/{planning_id}", headers=org_a.auth())
    assert response.status_code == 204
    await services.redis.set(f"search:{{{org_a.org_id}}}:gen", generation)  # as if never told
    calls = models.calls[EMBEDDINGS]
    after = (await search(client, org_a, **query)).json()
    assert models.calls[EMBEDDINGS] == calls  # the cached ranking was used...
    assert planning_id not in {h["recording_id"] for h in after["results"]}  # ...and filtered
    assert after["results"]


async def test_when_embeddings_are_down_hybrid_answers_by_words_and_vector_fails_clearly(
    client, models: CountingTransport, corpus, org_a: Tenant
):
    models.down = True
    response = await search(client, org_a, query="budget review")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "keyword"
    assert body["results"][0]["text"] == PLANNING[0]

    response = await search(client, org_a, query="budget review", mode="vector")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert "http" not in response.json()["detail"]  # the model server's address is for the log
    assert "keyword" in response.json()["detail"]

    # The degraded answer was not cached: with the models back, hybrid is hybrid again.
    models.down = False
    response = await search(client, org_a, query="budget review")
    assert response.json()["mode"] == "hybrid"


async def test_one_orgs_searches_tell_another_nothing(
    client, models: CountingTransport, org_a: Tenant, org_b: Tenant
):
    """The query-embedding cache is per org: had org B's search been served from org A's
    cached vector, its speed would tell B what A searched for."""
    body = {"query": "Initech acquisition price", "mode": "vector"}
    for tenant, calls in ((org_a, 1), (org_a, 1), (org_b, 2)):
        response = await client.post("/api/search", json=body, headers=tenant.auth())
        assert response.status_code == 200
        assert models.calls[EMBEDDINGS] == calls
