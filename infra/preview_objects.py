"""Deletes a destroyed preview's objects: every version under ``previews/pr-<n>/``.

A preview's pods write under its own prefix of the base stack's bucket (``infra/preview.py``),
which the preview's stack does not own, so ``pulumi destroy`` leaves the objects. The bucket
is versioned: deleting a key only adds a delete marker and keeps every byte, so this deletes
each version and each delete marker, in batches of 1000 (S3's limit per DeleteObjects).

``python -m infra.preview_objects --bucket <name> --prefix previews/pr-<n>/``, run by
preview.yml's destroy job after ``pulumi destroy``. It refuses any prefix but a preview's.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

# Only a preview's own prefix: a typo must not empty the base stack's objects.
PREVIEW_PREFIX = re.compile(r"previews/pr-[0-9]+/")
BATCH = 1000


class NotAPreviewPrefix(ValueError):
    pass


def _versions(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, str]]:
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            yield {"Key": entry["Key"], "VersionId": entry["VersionId"]}


def purge(s3: Any, bucket: str, prefix: str) -> int:
    """Delete every version and delete marker under ``prefix``; how many were deleted."""
    if not PREVIEW_PREFIX.fullmatch(prefix):
        raise NotAPreviewPrefix(f"refusing to purge {prefix!r}: not previews/pr-<n>/")
    # Listed in full first: deleting while paginating would move the pages under us.
    targets = list(_versions(s3, bucket, prefix))
    for start in range(0, len(targets), BATCH):
        batch = targets[start : start + BATCH]
        result = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if result.get("Errors"):
            first = result["Errors"][0]
            raise RuntimeError(
                f"{len(result['Errors'])} versions not deleted, e.g. {first['Key']}: "
                f"{first.get('Code')} {first.get('Message')}"
            )
    return len(targets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.preview_objects", description=__doc__)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True, help="previews/pr-<n>/")
    args = parser.parse_args(argv)
    import boto3

    try:
        count = purge(boto3.client("s3"), args.bucket, args.prefix)
    except NotAPreviewPrefix as refused:
        print(f"preview_objects: {refused}", file=sys.stderr)
        return 2
    print(f"preview_objects: {count} versions under s3://{args.bucket}/{args.prefix} deleted")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
