"""What the transcript cache buys: ``GET /api/recordings/{id}/transcript`` of a long meeting,
cached against uncached, measured in the same run.

    .venv/bin/python -m bench.cache [--segments 2400] [--requests 200]

The app runs in-process (ASGI, no sockets) on the embedded PostgreSQL and Valkey, started here;
one org, one recording whose transcript has ``segments`` segments (2400: about two hours of
speech as whisper segments it). The baseline is the same app with
``TRANSCRIPT_CACHE_TTL_SECONDS=0``. Rounds alternate baseline and cached; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import psycopg

from bench.stack import bench_stack

PASSWORD = "plum-tide-orbit-velvet-42"


def seed(url: str, org_id: str, user_id: str, segments: int) -> str:
    recording_id, transcript_id = str(uuid.uuid4()), str(uuid.uuid4())
    words = [
        "we",
        "talked",
        "about",
        "the",
        "launch",
        "plan",
        "and",
        "the",
        "budget",
        "for",
        "the",
        "next",
        "quarter",
    ]
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO recordings (id, org_id, created_by, title, status) "
            "VALUES (%s, %s, %s, 'Long meeting', 'ready')",
            (recording_id, org_id, user_id),
        )
        texts = [" ".join(words[(i % 5) :] + words[: (i % 5)]) for i in range(segments)]
        conn.execute(
            "INSERT INTO transcripts (id, org_id, recording_id, language, text, model) "
            "VALUES (%s, %s, %s, 'en', %s, 'whisper-1')",
            (transcript_id, org_id, recording_id, " ".join(texts)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO transcript_segments "
                "(transcript_id, idx, org_id, start_seconds, end_seconds, text) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (transcript_id, i, org_id, 3.0 * i, 3.0 * i + 2.9, t)
                    for i, t in enumerate(texts)
                ],
            )
    return recording_id


async def timed(client: Any, path: str, headers: dict[str, str], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, response.text
    return (time.perf_counter() - started) / n


async def run(settings: Any, segments: int, requests: int, rounds: int) -> dict[str, float]:
    import httpx
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    apps = {
        "uncached": create_app(settings.model_copy(update={"transcript_cache_ttl_seconds": 0})),
        "cached": create_app(settings),
    }
    async with LifespanManager(apps["uncached"]), LifespanManager(apps["cached"]):
        clients = {
            name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
            for name, app in apps.items()
        }
        signup = await clients["cached"].post(
            "/api/auth/signup",
            json={"email": "bench@example.com", "password": PASSWORD, "name": "Bench"},
        )
        assert signup.status_code == 201, signup.text
        body = signup.json()
        org_id, user_id = body["org"]["id"], body["user"]["id"]
        headers = {"Authorization": f"Bearer {body['session_token']}", "X-Record-Org": org_id}
        recording_id = seed(settings.database_url, org_id, user_id, segments)
        path = f"/api/recordings/{recording_id}/transcript"
        for client in clients.values():  # warm: connections, the first (missing) cache fill
            await timed(client, path, headers, 3)
        times: dict[str, list[float]] = {"uncached": [], "cached": []}
        for _ in range(rounds):
            for name in ("uncached", "cached"):
                times[name].append(await timed(clients[name], path, headers, requests))
        for client in clients.values():
            await client.aclose()
    return {name: statistics.median(values) for name, values in times.items()}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=2400)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with bench_stack("record-bench-cache-", ratelimit_enabled=False) as settings:
        result = await run(settings, args.segments, args.requests, args.rounds)

    uncached, cached = result["uncached"] * 1000, result["cached"] * 1000
    label = f"GET transcript, {args.segments} segments, ms per request"
    print(f"\n{'figure':<52}{'uncached':>10}{'cached':>10}{'ratio':>8}")
    print(f"{label:<52}{uncached:>10.2f}{cached:>10.2f}{uncached / cached:>8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
