"""A closed pull request's objects go with its preview: every version, every delete marker,
under its own prefix only (infra/preview_objects.py), against moto's versioned S3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra import preview_objects

BUCKET = "record-staging-objects"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="eu-west-1")
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def versions(s3: Any, prefix: str) -> int:
    found = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix):
        found += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return found


def test_every_version_and_marker_under_the_prefix_goes_and_nothing_else(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches, so that several DeleteObjects calls run.
    monkeypatch.setattr(preview_objects, "BATCH", 7)
    for index in range(12):
        key = f"previews/pr-7/recordings/{index}.wav"
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"v1")
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"v2")
        if index % 3 == 0:
            s3.delete_object(Bucket=BUCKET, Key=key)  # a delete marker on top
    for key in ("recordings/base.wav", "previews/pr-70/x.wav", "previews/pr-7.wav"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"keep")
    assert versions(s3, "previews/pr-7/") == 12 * 2 + 4

    assert preview_objects.purge(s3, BUCKET, "previews/pr-7/") == 28

    assert versions(s3, "previews/pr-7/") == 0
    assert versions(s3, "") == 3
    # Again: nothing left, nothing fails.
    assert preview_objects.purge(s3, BUCKET, "previews/pr-7/") == 0


@pytest.mark.parametrize("prefix", ["", "previews/", "previews/pr-7", "recordings/", "pr-7/"])
def test_only_a_previews_prefix_is_purged(s3: Any, prefix: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="recordings/base.wav", Body=b"keep")
    with pytest.raises(preview_objects.NotAPreviewPrefix):
        preview_objects.purge(s3, BUCKET, prefix)
    assert preview_objects.main(["--bucket", BUCKET, "--prefix", prefix]) == 2
    assert versions(s3, "") == 1


def test_the_command_the_destroy_job_runs(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    s3.put_object(Bucket=BUCKET, Key="previews/pr-3/a", Body=b"x")
    assert preview_objects.main(["--bucket", BUCKET, "--prefix", "previews/pr-3/"]) == 0
    assert "1 versions" in capsys.readouterr().out
    assert versions(s3, "previews/pr-3/") == 0
