"""Copy one provider image into S3, streamed, hashed, verified and idempotent (docs/architecture.md rule 6).

The body is read in parts of `multipart_chunksize` bytes straight into a buffer; a SHA-256 is
updated as bytes arrive and the fetcher enforces the byte cap. The first bytes sniff the image
type, which picks the extension and so the key `{prefix}{job_id}/{index}.{ext}`.

- A body that fits in `multipart_threshold` (by default the memory the multipart path would use
  anyway, 32 MiB; without a Content-Length, one part) is held whole and goes up in a single PUT
  that carries the final metadata, `sha256` included (the digest is known before the request).
- A larger body is read twice. The first pass only hashes (nothing is kept): a multipart upload's
  metadata is fixed when it starts, and the digest belongs in it (docs/architecture.md rule 6), where the
  alternative, copying the object onto itself afterwards, rewrites every byte in the store. The
  second pass streams the parts up, a few threads sending while the next part is read (memory ~=
  part size x (parts in flight + 1)), hashes again, and completes the upload only if both passes
  saw the same bytes.

Verification: every request carries `Content-MD5` (S3 and MinIO reject a body that does not match)
and the ETag each answer returns (the MD5 the store computed over what it stored; for a multipart
object the MD5 of the parts' MD5s, `-N`) must equal ours, which proves the stored bytes are the
streamed ones. A store whose ETags are not MD5s (SSE-KMS, SSE-C) falls back to a HEAD that checks
the size, that it is the object we wrote and its `sha256`; an object failing it is deleted, only
while it is still ours (a delete conditional on our ETag: another run may have written the key since,
docs/architecture.md rule 6). An object at the key with `sha256` metadata is therefore complete and
verified, and a re-run reuses it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from worker.fetch import FetchedBody, FetchFailure, SafeFetcher
from worker.s3 import upload_transfer_config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SHA256_METADATA = "sha256"  # object metadata key of the digest
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
READ_BYTES = 1024 * 1024  # one read from the source (hashed while still in the CPU cache)
SNIFF_BYTES = 16  # enough for `sniff_image_type`
BEAT_WAIT_SECONDS = 1.0  # how often a wait for parts in flight calls the heartbeat

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
    heartbeat: Callable[[], None] = lambda: None,
) -> ArchivedObject:
    """Stream `url` into `s3://{bucket}/{key_stem}.{ext}` and verify it.

    `metadata` (e.g. `{"job-id": ..., "provider-task-id": ...}`) is stored on the object, and the
    computed SHA-256 with it (see the module docstring for where). With `reuse_existing`, an object
    already verified at this key is returned without fetching (a re-run after a crash succeeds even
    if the source has expired since). `transfer_config` gives the part size
    (`multipart_chunksize`), the single-PUT limit (`multipart_threshold`) and the parts in flight
    (`max_concurrency`, at most `max_in_memory_upload_chunks`). `heartbeat` is called for every
    chunk read and while parts upload, and once more before the object is written (a PUT, or the
    multipart upload's completion): it keeps the caller's claim on the job alive, and raising
    there stops the copy (a multipart upload is aborted).

    Raises `FetchRefused`, `SourceGone`, `TooLarge`, `NotAnImage` (not retryable), `FetchError`
    and `ArchiveVerificationError` (retryable), and botocore errors for S3 failures (retryable).
    When anything fails no verified object is left at the key (a failed multipart upload is
    aborted, an object that fails verification is deleted).
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
        reader = _PartReader(body, part_size, url, heartbeat)
        head = reader.read_head()  # sniffs the type, or raises NotAnImage
        content_type = reader.content_type
        key = f"{key_stem}.{IMAGE_EXTENSIONS[content_type]}"
        target = _Target(s3, bucket, key, content_type)
        declared = _content_length(body)
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
        )
    if not target.etag_verified:
        target.verify_by_head(etag, size, digest)
    return ArchivedObject(
        bucket=bucket, key=key, sha256=digest, bytes=size, content_type=content_type, etag=etag
    )


def _upload_large(
    target: _Target,
    *,
    fetcher: SafeFetcher,
    url: str,
    cap: int,
    part_size: int,
    metadata: dict[str, str],
    in_flight: int,
    expected: tuple[str, int],
    heartbeat: Callable[[], None],
) -> str:
    """The second pass over a large body: a multipart upload whose metadata carries the digest the
    first pass computed, completed only if this pass reads the same bytes."""
    digest, size = expected
    with fetcher.open(url, max_bytes=cap) as body:
        reader = _PartReader(body, part_size, url, heartbeat)
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
            before_complete=same_bytes,
            heartbeat=heartbeat,
        )


class _PartReader:
    """Reads the fetched body in parts (fresh buffers), updating the SHA-256 of the whole body as
    bytes arrive (while they are still in the CPU cache), and calling `heartbeat` after each read."""

    def __init__(self, body: FetchedBody, part_size: int, url: str, heartbeat: Callable[[], None]) -> None:
        self._body = body
        self._beat = heartbeat
        self._part_size = part_size
        self._url = url
        self._hash = hashlib.sha256()
        self.bytes_read = 0
        self.content_type = ""

    def read_head(self) -> bytes:
        """The first 16 bytes (fewer if the body is shorter), which tell the content type;
        NotAnImage if they do not. Small, as `read_part` copies them into the first part."""
        buf = bytearray(SNIFF_BYTES)
        got = 0
        with memoryview(buf) as view:
            while got < SNIFF_BYTES:
                n = self._body.readinto(view[got:])
                if not n:
                    break
                got += n
        head = bytes(buf[:got])
        self.bytes_read += got
        content_type = sniff_image_type(head)
        if content_type is None:
            raise NotAnImage("the source is not a PNG, JPEG, WEBP or GIF image", url=self._url)
        self.content_type = content_type
        return head

    def read_part(self, head: bytes = b"", size: int | None = None) -> bytearray:
        """The next `size` (default: part size) bytes, fewer only at the end of the body."""
        size = self._part_size if size is None else size
        buf = bytearray(max(size, len(head)))
        got = len(head)
        with memoryview(buf) as view:
            view[:got] = head
            self._hash.update(head)
            while got < size:
                n = self._body.readinto(view[got : got + READ_BYTES])
                if not n:
                    break
                chunk = view[got : got + n]
                self._hash.update(chunk)
                chunk.release()
                got += n
                self._beat()
        if got < len(buf):
            del buf[got:]
        self.bytes_read += got - len(head)  # read_head counted the head
        return buf

    def parts(self, head: bytes) -> Iterator[bytearray]:
        """Every part of the body, the first holding `head`."""
        part = self.read_part(head)
        while part:
            yield part
            part = self.read_part()

    def drain(self, head: bytes = b"") -> None:
        """Hash `head` (from `read_head`, when no part holds it) and the rest of the body, read
        into one reused buffer: nothing is kept."""
        self._hash.update(head)
        buf = bytearray(READ_BYTES)
        with memoryview(buf) as view:
            while n := self._body.readinto(view):
                chunk = view[:n]
                self._hash.update(chunk)
                chunk.release()
                self.bytes_read += n
                self._beat()

    def at_end(self) -> bool:
        """Whether the body has no byte left (reads one if it has)."""
        return not self._body.readinto(bytearray(1))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Target:
    """Writes one object (one PUT or a multipart upload) and checks the ETags the store returns."""

    def __init__(self, s3: S3Client, bucket: str, key: str, content_type: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.content_type = content_type
        self.etag_verified = False

    def put(self, data: bytearray, metadata: dict[str, str]) -> str:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        body: Any = data  # botocore takes any bytes-like body; the stubs say bytes or IO
        answer = self.s3.put_object(
            Bucket=self.bucket,
            Key=self.key,
            Body=body,
            # The store rejects a body that does not match, so no wrong object ever carries `sha256`.
            ContentMD5=base64.b64encode(md5).decode(),
            ContentType=self.content_type,
            Metadata=metadata,
        )
        etag = answer["ETag"].strip('"')
        self.etag_verified = etag == md5.hex()
        return etag

    def multipart(
        self,
        parts: Iterator[bytearray],
        metadata: dict[str, str],
        in_flight: int,
        *,
        before_complete: Callable[[], None] = lambda: None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> str:
        """Upload `parts` with `in_flight` of them on the wire while the next one is read.

        Each part's MD5 is computed by another thread while the part uploads (hashlib and socket
        writes release the GIL) and checked against the part's ETag before the upload completes;
        parts are invisible until then, so no Content-MD5 is needed to keep a bad object out.
        """
        uploaded: list[tuple[int, str, bytes]] = []
        # One thread per part in flight for the upload, one for its MD5, one for CreateMultipartUpload.
        with ThreadPoolExecutor(max_workers=2 * in_flight + 1, thread_name_prefix="archive-part") as pool:
            created = pool.submit(
                self.s3.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                ContentType=self.content_type,
                Metadata=metadata,
            )
            try:
                uploaded = self._upload_parts(pool, created, parts, in_flight, heartbeat)
                for number, etag, md5 in uploaded:
                    # A store whose ETags are MD5s told us what it stored: a part that differs
                    # aborts the upload (parts are invisible until completed).
                    stored = etag.strip('"')
                    if _is_md5(stored) and stored != md5.hex():
                        raise ArchiveVerificationError(f"part {number} stored as {stored}, sent {md5.hex()}")
                before_complete()  # raising here aborts too
                answer = self.s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=created.result()["UploadId"],
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e, _ in uploaded]},
                )
            except BaseException:
                # The original error is the one to report; an aborted upload leaves no object.
                with contextlib.suppress(Exception):
                    upload_id = created.result()["UploadId"]
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
                raise
        etag = answer["ETag"].strip('"')
        md5s = b"".join(md5 for _, _, md5 in uploaded)
        expected = f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(uploaded)}"
        self.etag_verified = etag == expected and all(e.strip('"') == m.hex() for _, e, m in uploaded)
        return etag

    def _upload_parts(
        self,
        pool: ThreadPoolExecutor,
        created: Future[Any],
        parts: Iterator[bytearray],
        in_flight: int,
        heartbeat: Callable[[], None],
    ) -> list[tuple[int, str, bytes]]:
        """(part number, ETag, our MD5) of every part; `heartbeat` keeps beating while parts upload."""
        uploads: list[tuple[int, Future[str], Future[bytes]]] = []
        pending: set[Future[Any]] = {created}
        try:
            for number, part in enumerate(parts, start=1):
                if number > MAX_PARTS:
                    raise ValueError(f"more than {MAX_PARTS} parts")
                if len(pending) >= in_flight:
                    # Bounded memory: `in_flight` parts uploading and this one read, no more.
                    done, pending = _wait_beating(pending, heartbeat, FIRST_COMPLETED)
                    for finished in done:
                        finished.result()  # an S3 error stops the reading early
                md5 = pool.submit(_md5, part)
                upload = pool.submit(self._upload_part, created, number, part)
                del part  # only the pool's work items hold the buffer now
                uploads.append((number, upload, md5))
                pending.add(upload)
            _wait_beating(pending, heartbeat, FIRST_EXCEPTION)
            return [(number, upload.result(), md5.result()) for number, upload, md5 in uploads]
        except BaseException:
            for future in pending:
                future.cancel()
            wait(pending)
            raise

    def _upload_part(self, created: Future[Any], number: int, data: bytearray) -> str:
        body: Any = data
        answer = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=created.result()["UploadId"],
            PartNumber=number,
            Body=body,
        )
        return answer["ETag"]

    def verify_by_head(self, etag: str, size: int, digest: str) -> None:
        """For stores whose ETags are not MD5s: the object is ours (ETag), has the streamed size
        and the `sha256` metadata."""
        head = self.s3.head_object(Bucket=self.bucket, Key=self.key)
        stored = head.get("Metadata", {}).get(SHA256_METADATA)
        found = head["ETag"].strip('"')
        if head["ContentLength"] == size and found == etag and stored == digest:
            return
        error = ArchiveVerificationError(
            f"s3://{self.bucket}/{self.key} has {head['ContentLength']} bytes / ETag {head['ETag']}"
            f" / sha256 {stored}, wrote {size} bytes / ETag {etag} / sha256 {digest}"
        )
        if found == etag:
            # Ours, and it carries `sha256`: never leave that mark on an unverified object.
            self.delete_own(etag)
        # Another ETag: another run wrote the key since (and may have recorded it); not ours to delete.
        raise error

    def delete_own(self, etag: str) -> None:
        """Delete the object at the key only while it is still the one this run wrote (`etag`)."""
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=f'"{etag}"')
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                return  # replaced since the HEAD: another run's object, keep it
            if code not in ("NotImplemented", "501"):
                raise
            # A store without conditional deletes: the HEAD just showed our ETag, the best check left.
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)


def _wait_beating(
    pending: set[Future[Any]], heartbeat: Callable[[], None], return_when: str
) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """`concurrent.futures.wait` (FIRST_COMPLETED or FIRST_EXCEPTION), calling `heartbeat` every
    `BEAT_WAIT_SECONDS` while S3 takes its time."""
    while True:
        done, not_done = wait(pending, timeout=BEAT_WAIT_SECONDS, return_when=return_when)
        if return_when == FIRST_COMPLETED:
            if done:
                return done, not_done
        elif not not_done or any(f.exception() is not None for f in done if not f.cancelled()):
            return done, not_done
        heartbeat()


def _content_length(body: FetchedBody) -> int | None:
    """The size of the body as read, from the source's Content-Length; None when it sends none,
    or when it is not the size of the bytes we read (a compressed or chunked response)."""
    headers = body.headers
    if headers.get("Transfer-Encoding") or headers.get("Content-Encoding", "identity") != "identity":
        return None
    raw = headers.get("Content-Length")
    return int(raw) if raw is not None and raw.isdigit() else None


def _is_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


def _md5(data: bytearray) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()
