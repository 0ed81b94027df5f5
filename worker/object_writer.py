"""Writing one archived object to S3: a single PUT or a multipart upload (started fresh or resumed),
each checked against the ETags the store returns (worker.archiver's store side)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from worker.fetch import FetchFailure
from worker.resume import OpenUpload, StoredPart, is_md5, md5_of, reusable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SHA256_METADATA = "sha256"  # object metadata key of the digest
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
BEAT_WAIT_SECONDS = 1.0  # how often a wait for parts in flight calls the heartbeat


class ArchiveVerificationError(Exception):
    """The stored object does not match what was streamed (size or SHA-256); retry the archive."""

    retryable = True


def abandons_parts(exc: BaseException) -> bool:
    """Whether a failed multipart upload's parts are worthless (abort it) rather than worth
    resuming (leave it open for the next run): bytes that failed a check, or a source the archive
    will never take (too large, wrong type, gone). A kill, a lost claim, a network or S3 error
    leaves the upload open."""
    if isinstance(exc, ArchiveVerificationError | ValueError):
        return True
    return isinstance(exc, FetchFailure) and not exc.retryable


class ObjectWriter:
    """Writes one object (one PUT or a multipart upload) and checks the ETags the store returns."""

    def __init__(self, s3: S3Client, bucket: str, key: str, content_type: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.content_type = content_type
        self.etag_verified = False
        self.resumed = False  # continued an upload an earlier run left open
        self.reused_parts: set[int] = set()  # numbers of that upload's parts kept, not sent again

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
        resume: OpenUpload | None = None,
        before_complete: Callable[[], None] = lambda: None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> str:
        """Upload `parts` with `in_flight` of them on the wire while the next one is read.

        Each part's MD5 is computed by another thread while the part uploads (hashlib and socket
        writes release the GIL) and checked against the part's ETag before the upload completes;
        parts are invisible until then, so no Content-MD5 is needed to keep a bad object out.
        With `resume`, parts go into that open upload and a part it already holds with our bytes
        (`worker.resume.reusable`) is not sent again. The resumed upload's metadata was fixed by
        the run that started it: the caller checks the completed object's `sha256` (a HEAD).
        """
        uploaded: list[tuple[int, str, bytes]] = []
        # One thread per part in flight for the upload, one for its MD5, one for CreateMultipartUpload.
        with ThreadPoolExecutor(max_workers=2 * in_flight + 1, thread_name_prefix="archive-part") as pool:
            if resume is not None:
                self.resumed = True
                created: Future[Any] = Future()
                created.set_result({"UploadId": resume.upload_id})
            else:
                created = pool.submit(
                    self.s3.create_multipart_upload,
                    Bucket=self.bucket,
                    Key=self.key,
                    ContentType=self.content_type,
                    Metadata=metadata,
                )
            stored = resume.parts if resume is not None else {}
            try:
                uploaded = self._upload_parts(pool, created, parts, in_flight, heartbeat, stored=stored)
                for number, etag, md5 in uploaded:
                    # A store whose ETags are MD5s told us what it stored: a part that differs
                    # aborts the upload (parts are invisible until completed).
                    found = etag.strip('"')
                    if is_md5(found) and found != md5.hex():
                        raise ArchiveVerificationError(f"part {number} stored as {found}, sent {md5.hex()}")
                before_complete()  # raising here aborts too
                answer = self.s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=created.result()["UploadId"],
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e, _ in uploaded]},
                )
            except BaseException as exc:
                # The original error is the one to report; an aborted upload leaves no object,
                # one left open is resumed by the next run (`abandons_parts`).
                if abandons_parts(exc):
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
        *,
        stored: Mapping[int, StoredPart],
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
                md5 = pool.submit(md5_of, part)
                upload = pool.submit(self._send_part, created, number, part, md5, stored.get(number))
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

    def _send_part(
        self,
        created: Future[Any],
        number: int,
        data: bytearray,
        md5: Future[bytes],
        stored: StoredPart | None,
    ) -> str:
        """Upload part `number`, unless the resumed upload already holds exactly these bytes."""
        if stored is not None and reusable(stored, len(data), md5.result()):
            self.reused_parts.add(number)  # set.add is atomic: parts finish on several threads
            return stored.etag
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
        """For stores whose ETags are not MD5s, and for resumed uploads: the object is ours (ETag),
        has the streamed size and the `sha256` metadata."""
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
