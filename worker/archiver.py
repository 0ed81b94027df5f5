"""Copy one provider output (image or video) into S3, streamed, hashed, verified, idempotent and
resumable (docs/architecture.md rule 6).

The body is read in parts of `multipart_chunksize` bytes straight into a buffer; a SHA-256 is
updated as bytes arrive and the fetcher enforces the byte cap. The first bytes sniff the type
(`worker.media`), which must be the output's kind and picks the key `{prefix}{job_id}/{index}.{ext}`.

- A body that fits in `multipart_threshold` (by default the memory the multipart path would use
  anyway, 32 MiB; without a Content-Length, one part) is held whole and goes up in a single PUT
  that carries the final metadata, `sha256` included (the digest is known before the request).
- A larger body (any real video) is read twice. The first pass only hashes (nothing is kept): a
  multipart upload's metadata is fixed when it starts, and the digest belongs in it, where the
  alternative, copying the object onto itself afterwards, rewrites every byte in the store. The
  second pass streams the parts up, a few threads sending while the next part is read (memory ~=
  part size x (parts in flight + 1), whatever the size of the body), hashes again, and completes the
  upload only if both passes saw the same bytes.
- A re-run (`reuse_existing`) continues the multipart upload an interrupted run left open
  (`worker.resume`): it reads the source again in full (both passes) but sends only the parts the
  open upload does not already hold with the same bytes, then checks the completed object's
  `sha256` with a HEAD (that upload's metadata came from the earlier run's first pass).

Verification: every request carries `Content-MD5` or has its part ETag checked (`worker.object_writer`);
the ETag each answer returns (the MD5 the store computed) must equal ours, which proves the stored
bytes are the streamed ones. A store whose ETags are not MD5s (SSE-KMS, SSE-C) falls back to a HEAD
that checks the size, that it is the object we wrote and its `sha256`; an object failing it is
deleted while it is still ours. An object at the key with `sha256` metadata is therefore complete
and verified, and a re-run reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from boto3.s3.transfer import TransferConfig

from worker.fetch import SafeFetcher
from worker.media import EXTENSIONS, IMAGE, NotAnImage, NotAVideo, WrongMediaType, object_key, object_stem
from worker.object_writer import MAX_PARTS, SHA256_METADATA, ArchiveVerificationError, ObjectWriter
from worker.part_reader import PartReader, content_length
from worker.resume import find_open_upload
from worker.s3 import upload_transfer_config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "ArchiveVerificationError",
    "ArchivedObject",
    "NotAVideo",
    "NotAnImage",
    "WrongMediaType",
    "archive_image",
    "find_archived",
    "object_key",
    "object_stem",
]


@dataclass(frozen=True)
class ArchivedObject:
    bucket: str
    key: str
    sha256: str
    bytes: int
    content_type: str
    etag: str
    reused: bool = False  # True when a verified object was already there and nothing was fetched
    parts_reused: int = 0  # parts of an interrupted run's multipart upload kept, not sent again


def find_archived(s3: S3Client, *, bucket: str, key_stem: str) -> ArchivedObject | None:
    """A complete, verified object already stored for this output (any extension), if there is one."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{key_stem}.")
    for item in listing.get("Contents", []):
        ext = item["Key"][len(key_stem) + 1 :]
        if ext not in EXTENSIONS.values():
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
    heartbeat: Callable[[], None] = lambda: None,
    output_type: str = IMAGE,
) -> ArchivedObject:
    """Stream `url` into `s3://{bucket}/{key_stem}.{ext}` and verify it.

    `output_type` ("image" or "video") says which content types the body may have. `metadata`
    (e.g. `{"job-id": ..., "provider-task-id": ...}`) is stored on the object, and the computed
    SHA-256 with it. With `reuse_existing` (a re-run), an object already verified at this key is
    returned without fetching (a re-run after a crash succeeds even if the source has expired
    since), and a multipart upload left open at the key is continued. `transfer_config` gives the
    part size (`multipart_chunksize`), the single-PUT limit (`multipart_threshold`) and the parts
    in flight (`max_concurrency`, at most `max_in_memory_upload_chunks`). `heartbeat` is called
    for every chunk read and while parts upload, and once more before the object is written: it
    keeps the caller's claim on the job alive, and raising there stops the copy.

    Raises `FetchRefused`, `SourceGone`, `TooLarge`, `NotAnImage`/`NotAVideo` (not retryable),
    `FetchError` and `ArchiveVerificationError` (retryable), and botocore errors for S3 failures
    (retryable). When anything fails no verified object is left at the key; a multipart upload is
    aborted when its parts are worthless and left open for the next run otherwise
    (`worker.object_writer.abandons_parts`).
    """
    if reuse_existing:
        existing = find_archived(s3, bucket=bucket, key_stem=key_stem)
        if existing is not None:
            return existing
    cap = fetcher.max_bytes if max_bytes is None else max_bytes
    config = transfer_config or upload_transfer_config()
    part_size = int(config.multipart_chunksize)
    threshold = int(config.multipart_threshold)
    if cap > part_size * MAX_PARTS:
        raise ValueError(f"max_bytes above {part_size * MAX_PARTS} ({MAX_PARTS} parts) is not supported")
    in_flight = max(1, min(config.max_concurrency, getattr(config, "max_in_memory_upload_chunks", 1)))

    large: tuple[str, int] | None = None  # (digest, size) from the hashing pass of a large body
    with fetcher.open(url, max_bytes=cap) as body:
        reader = PartReader(body, part_size, url, heartbeat, output_type)
        head = reader.read_head()  # sniffs the type, or raises NotAnImage / NotAVideo
        content_type = reader.content_type
        key = f"{key_stem}.{EXTENSIONS[content_type]}"
        target = ObjectWriter(s3, bucket, key, content_type)
        declared = content_length(body)
        whole: bytearray | None = None
        if declared is not None and declared <= threshold:
            # Announced small enough to hold whole (urllib3 holds the source to its Content-Length).
            whole = reader.read_part(head, declared)
            if not reader.at_end():
                # Never store the announced bytes of a longer body as if they were all of it.
                raise ArchiveVerificationError(f"{url} sent more than its Content-Length of {declared}")
        elif declared is None:
            # No Content-Length: hold at most one part to find out whether that is all.
            first = reader.read_part(head)
            head = b""  # hashed with the part
            if len(first) < part_size and len(first) <= threshold:
                whole = first
            del first
        if whole is not None:
            # One PUT with the final metadata, digest included.
            heartbeat()
            etag = target.put(whole, {**metadata, SHA256_METADATA: reader.hexdigest()})
            del whole
        else:
            reader.drain(head)
            large = (reader.hexdigest(), reader.bytes_read)
        digest, size = reader.hexdigest(), reader.bytes_read

    if large is not None:
        etag = _upload_large(
            target,
            fetcher=fetcher,
            url=url,
            cap=cap,
            part_size=part_size,
            metadata=dict(metadata),
            in_flight=in_flight,
            expected=large,
            heartbeat=heartbeat,
            output_type=output_type,
            resume=reuse_existing,
        )
    if not target.etag_verified or target.resumed:
        target.verify_by_head(etag, size, digest)
    return ArchivedObject(
        bucket=bucket,
        key=key,
        sha256=digest,
        bytes=size,
        content_type=content_type,
        etag=etag,
        parts_reused=len(target.reused_parts),
    )


def _upload_large(
    target: ObjectWriter,
    *,
    fetcher: SafeFetcher,
    url: str,
    cap: int,
    part_size: int,
    metadata: dict[str, str],
    in_flight: int,
    expected: tuple[str, int],
    heartbeat: Callable[[], None],
    output_type: str,
    resume: bool,
) -> str:
    """The second pass over a large body: a multipart upload whose metadata carries the digest the
    first pass computed (or the open upload of an interrupted run, with `resume`), completed only
    if this pass reads the same bytes."""
    digest, size = expected
    # Only a re-run can find an upload left open (saves a LIST on the first run).
    open_upload = find_open_upload(target.s3, bucket=target.bucket, key=target.key) if resume else None
    with fetcher.open(url, max_bytes=cap) as body:
        reader = PartReader(body, part_size, url, heartbeat, output_type)
        head = reader.read_head()

        def same_bytes() -> None:
            if (reader.content_type, reader.hexdigest(), reader.bytes_read) != (
                target.content_type,
                digest,
                size,
            ):
                raise ArchiveVerificationError(
                    f"{url} changed between reads: {reader.bytes_read} bytes / sha256 {reader.hexdigest()}"
                    f", first read {size} bytes / sha256 {digest}"
                )
            heartbeat()

        return target.multipart(
            reader.parts(head),
            {**metadata, SHA256_METADATA: digest},
            in_flight,
            resume=open_upload,
            before_complete=same_bytes,
            heartbeat=heartbeat,
        )
