"""A share link's media on the S3 backend (moto's S3 server): a redirect to a presigned URL
that lives at most five minutes, and never past the link itself."""

# ruff: noqa: F811 - pytest passes the imported `moto_s3` fixture by parameter name

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.app.conftest import Tenant
from tests.app.kit.test_storage import MotoS3, moto_s3  # noqa: F401 - the shared moto server
from tests.app.recordings.test_upload import upload, wav_bytes


@pytest.fixture
def settings(settings: Any, moto_s3: MotoS3) -> Any:
    return settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_bucket": moto_s3.new_bucket(),
            "s3_endpoint_url": moto_s3.endpoint_url,
            "aws_region": "us-east-1",
        }
    )


async def _media_url(client: httpx.AsyncClient, tenant: Tenant, **share: Any) -> tuple[str, bytes]:
    content = wav_bytes(0.3)
    uploaded = await upload(client, tenant, content, "sync.wav")
    assert uploaded.status_code == 202, uploaded.text
    recording_id = uploaded.json()["recording"]["id"]
    made = await client.post(
        "/api/share",
        json={"resource_type": "recording", "resource_id": recording_id, **share},
        headers=tenant.auth(),
    )
    assert made.status_code == 201, made.text
    media = await client.get(f"/s/{made.json()['share_id']}/media")  # anyone, no credentials
    assert media.status_code == 307, media.text
    return media.headers["location"], content


def _expires_in(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


async def test_a_links_media_url_lives_five_minutes_at_most(
    client: httpx.AsyncClient, org_a: Tenant
) -> None:
    url, content = await _media_url(client, org_a)  # a link that never expires
    assert _expires_in(url) == 300
    async with httpx.AsyncClient() as http:  # and it really opens the object
        fetched = await http.get(url)
    assert fetched.status_code == 200
    assert fetched.content == content
    url, _ = await _media_url(client, org_a, expires_in=24 * 3600)
    assert _expires_in(url) == 300


async def test_a_links_media_url_ends_no_later_than_the_link(
    client: httpx.AsyncClient, org_a: Tenant
) -> None:
    url, _ = await _media_url(client, org_a, expires_in=120)
    assert 100 <= _expires_in(url) <= 120
