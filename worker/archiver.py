"""Copy one provider image into S3, streamed, hashed, verified and idempotent (DESIGN.md rule 6).

The body flows source -> `HashingReader` -> `upload_fileobj` (multipart, bounded memory): the
reader updates a SHA-256 and a byte count as bytes pass and the fetcher enforces the byte cap.
The first bytes are peeked to sniff the image type, which picks the extension and so the key
`{prefix}{job_id}/{index}.{ext}`.

S3 metadata is sent when an upload starts, before the SHA-256 is known, so the object is uploaded
first and then copied onto itself (server side, no bytes through us) with the final metadata.
An object at the key *with* `sha256` metadata is therefore complete and verified; one without it
is the leftover of a crash between the two steps and is simply overwritten by the next run.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig

from worker.fetch import FetchedBody, FetchFailure, SafeFetcher
from worker.s3 import upload_transfer_config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SHA256_METADATA = "sha256"
MAX_SINGLE_COPY_BYTES = 5 * 1024**3  # CopyObject's limit; the default cap is 100 MiB

# Content type sniffed from the bytes -> object key extension.
IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class NotAnImage(FetchFailure):
    """The source answered 200 but the body is not a PNG, JPEG, WEBP or GIF image."""


class ArchiveVerificationError(Exception):
    """The stored object does not match what was streamed (size or SHA-256); retry the archive."""

    retryable = True


@dataclass(frozen=True)
class ArchivedObject:
    bucket: str
    key: str
    sha256: str
    bytes: int
    content_type: str
    etag: str
    reused: bool = False  # True when a verified object was already there and nothing was fetched


def sniff_image_type(head: bytes) -> str | None:
    """The content type told by the first bytes (12 are enough), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def object_stem(prefix: str, job_id: str, index: int) -> str:
    """The key of image `index` of `job_id` without its extension."""
    return f"{prefix}{job_id}/{index}"


def object_key(prefix: str, job_id: str, index: int, ext: str) -> str:
    """The deterministic object key `{prefix}{job_id}/{index}.{ext}`."""
    return f"{object_stem(prefix, job_id, index)}.{ext}"


class HashingReader(io.RawIOBase):
    """A read-only stream over the fetched body that hashes and counts bytes as they flow.

    `read(n)` returns exactly `n` bytes until the end of the body: s3transfer reads each multipart
    part with one call and a short read would make an undersized part.
    """

    def __init__(self, body: FetchedBody, chunk_bytes: int = 256 * 1024) -> None:
        super().__init__()
        self._body = body
        self._chunk = chunk_bytes
        self._peeked = b""
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def peek(self, size: int) -> bytes:
        """Up to `size` leading bytes, without consuming them."""
        while len(self._peeked) < size:
            more = self._body.read(size - len(self._peeked))
            if not more:
                break
            self._peeked += more
        return self._peeked[:size]

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        want = size if size is not None and size >= 0 else None
        got = 0
        if self._peeked:
            take = self._peeked if want is None else self._peeked[:want]
            self._peeked = self._peeked[len(take) :]
            parts.append(take)
            got += len(take)
        while want is None or got < want:
            chunk = self._body.read(self._chunk if want is None else min(self._chunk, want - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    @property
    def headers(self) -> Any:
        return self._body.headers

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._body.close()
        super().close()


def find_archived(s3: S3Client, *, bucket: str, key_stem: str) -> ArchivedObject | None:
    """A complete, verified object already stored for this image (any extension), if there is one."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{key_stem}.")
    for item in listing.get("Contents", []):
        ext = item["Key"][len(key_stem) + 1 :]
        if ext not in IMAGE_EXTENSIONS.values():
            continue
        head = s3.head_object(Bucket=bucket, Key=item["Key"])
        digest = head.get("Metadata", {}).get(SHA256_METADATA)
        if digest:
            return ArchivedObject(
                bucket=bucket,
                key=item["Key"],
                sha256=digest,
                bytes=head["ContentLength"],
                content_type=head.get("ContentType", ""),
                etag=head["ETag"].strip('"'),
                reused=True,
            )
    return None


def archive_image(
    s3: S3Client,
    *,
    bucket: str,
    key_stem: str,
    url: str,
    fetcher: SafeFetcher,
    metadata: Mapping[str, str],
    max_bytes: int | None = None,
    transfer_config: TransferConfig | None = None,
    reuse_existing: bool = True,
) -> ArchivedObject:
    """Stream `url` into `s3://{bucket}/{key_stem}.{ext}` and verify it.

    `metadata` (e.g. `{"job-id": ..., "provider-task-id": ...}`) is stored on the object with the
    computed `sha256`. With `reuse_existing`, an object already verified at this key is returned
    without fetching (a re-run after a crash succeeds even if the source has expired since).

    Raises `FetchRefused`, `SourceGone`, `TooLarge`, `NotAnImage` (not retryable), `FetchError`
    and `ArchiveVerificationError` (retryable), and botocore errors for S3 failures (retryable).
    When anything fails no new object is left at the key (a failed multipart upload is aborted).
    """
    if reuse_existing:
        existing = find_archived(s3, bucket=bucket, key_stem=key_stem)
        if existing is not None:
            return existing
    cap = fetcher.max_bytes if max_bytes is None else max_bytes
    if cap > MAX_SINGLE_COPY_BYTES:
        raise ValueError(f"max_bytes above {MAX_SINGLE_COPY_BYTES} is not supported")
    config = transfer_config or upload_transfer_config()

    with HashingReader(fetcher.open(url, max_bytes=cap)) as reader:
        content_type = sniff_image_type(reader.peek(16))
        if content_type is None:
            raise NotAnImage("the source is not a PNG, JPEG, WEBP or GIF image", url=url)
        key = f"{key_stem}.{IMAGE_EXTENSIONS[content_type]}"
        if _declared_size(reader) <= config.multipart_threshold:
            # Small enough to hold (one multipart chunk at most): hash first, then a single PUT that
            # carries the final metadata, so no copy is needed afterwards.
            body = reader.read()
            digest, size = reader.hexdigest(), reader.bytes_read
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata={**metadata, SHA256_METADATA: digest},
            )
            del body
        else:
            try:
                # Any object with read() is accepted; the stubs' IO type does not say so.
                fileobj: Any = reader
                s3.upload_fileobj(
                    fileobj,
                    bucket,
                    key,
                    ExtraArgs={"ContentType": content_type, "Metadata": dict(metadata)},
                    Config=config,
                )
            except Exception as exc:
                # s3transfer may hand back our own error wrapped; surface the typed fetch error.
                cause = _fetch_failure_in(exc)
                if cause is not None and cause is not exc:
                    raise cause from exc
                raise
            digest, size = reader.hexdigest(), reader.bytes_read
            # The hash is known only now: set it on the stored object (a server-side copy).
            s3.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": bucket, "Key": key},
                Metadata={**metadata, SHA256_METADATA: digest},
                MetadataDirective="REPLACE",
                ContentType=content_type,
            )

    head = s3.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size or head.get("Metadata", {}).get(SHA256_METADATA) != digest:
        raise ArchiveVerificationError(
            f"s3://{bucket}/{key} has {head['ContentLength']} bytes / sha256 "
            f"{head.get('Metadata', {}).get(SHA256_METADATA)}, streamed {size} bytes / {digest}"
        )
    return ArchivedObject(
        bucket=bucket,
        key=key,
        sha256=digest,
        bytes=size,
        content_type=content_type,
        etag=head["ETag"].strip('"'),
    )


def _declared_size(reader: HashingReader) -> float:
    """The source's Content-Length (urllib3 enforces it), or infinity when it sends none."""
    raw = reader.headers.get("Content-Length")
    return int(raw) if raw is not None and raw.isdigit() else float("inf")


def _fetch_failure_in(exc: BaseException) -> FetchFailure | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, FetchFailure):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
