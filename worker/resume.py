"""Resuming a multipart upload that a killed or interrupted run left open at an object's key.

A run that dies mid-upload (SIGKILL, a lost claim, a dropped source or S3 connection) leaves its
multipart upload open on purpose: the next run finds it (`find_open_upload`), lists its parts, and
re-sends only the parts whose stored size and ETag (the MD5 the store computed) do not prove they
already hold the bytes it reads now (`reusable`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class StoredPart:
    number: int
    etag: str  # unquoted
    size: int


@dataclass(frozen=True)
class OpenUpload:
    upload_id: str
    parts: Mapping[int, StoredPart]


def find_open_upload(s3: S3Client, *, bucket: str, key: str) -> OpenUpload | None:
    """The newest multipart upload still open at exactly `key`, with the parts it holds."""
    answer = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
    uploads = [u for u in answer.get("Uploads", []) if u.get("Key") == key and "UploadId" in u]
    if not uploads:
        return None
    # Older ones (several crashes in a row) are left to the bucket's AbortIncompleteMultipartUpload rule.
    newest = max(uploads, key=lambda u: u["Initiated"])
    upload_id = newest["UploadId"]
    parts: dict[int, StoredPart] = {}
    marker = 0
    while True:
        page = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
        for p in page.get("Parts", []):
            number = p["PartNumber"]
            parts[number] = StoredPart(number, p["ETag"].strip('"'), p["Size"])
        if not page.get("IsTruncated"):
            break
        marker = page["NextPartNumberMarker"]
    return OpenUpload(upload_id, parts)


def reusable(stored: StoredPart | None, size: int, md5: bytes) -> bool:
    """Whether a part already in the open upload holds exactly the bytes whose MD5 is `md5`: same
    size and an ETag equal to that MD5. A store whose ETags are not MD5s (SSE-KMS, SSE-C) cannot
    show it, so there every part is sent again."""
    if stored is None:
        return False
    return stored.size == size and is_md5(stored.etag) and stored.etag == md5.hex()


def is_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


def md5_of(data: bytearray) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()
