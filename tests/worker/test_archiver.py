"""The S3 archiver: a local source server -> SafeFetcher -> moto's S3 server, all over HTTP."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time

import pytest
from werkzeug import Response

from tests.fixtures.services import assert_no_connection
from worker.archiver import (
    ArchivedObject,
    ArchiveVerificationError,
    NotAnImage,
    archive_image,
    object_stem,
)
from worker.fetch import FetchError, FetchRefused, SafeFetcher, SourceGone, TooLarge
from worker.s3 import MiB, upload_transfer_config

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
GIF = b"GIF89a\x01\x00\x01\x00"
META = {"job-id": "job-123", "provider-task-id": "task-abc"}


def image_bytes(magic: bytes, size: int, seed: int = 7) -> bytes:
    return magic + random.Random(seed).randbytes(size - len(magic))


def generated_chunks(total: int, chunk: int = MiB, seed: int = 11):
    """A deterministic large body produced on the fly (never held whole by the server)."""
    rng = random.Random(seed)
    sent = 0
    first = True
    while sent < total:
        n = min(chunk, total - sent)
        data = rng.randbytes(n)
        if first:
            data = PNG + data[len(PNG) :]
            first = False
        sent += n
        yield data


def objects(s3, bucket):
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture
def fetcher():
    with SafeFetcher(["127.0.0.1"], max_bytes=64 * MiB) as f:
        yield f


def archive(s3_client, bucket, url, fetcher, **kwargs) -> ArchivedObject:
    return archive_image(
        s3_client,
        bucket=bucket,
        key_stem=object_stem("images/", "job-123", 0),
        url=url,
        fetcher=fetcher,
        metadata=META,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("magic", "content_type", "ext"),
    [
        (PNG, "image/png", "png"),
        (JPEG, "image/jpeg", "jpg"),
        (WEBP, "image/webp", "webp"),
        (GIF, "image/gif", "gif"),
    ],
)
def test_archives_an_image_with_hash_size_type_and_metadata(
    s3_client, s3_bucket, source_server, fetcher, magic, content_type, ext
):
    data = image_bytes(magic, 50_000)
    # The server lies about the type: the bytes decide.
    source_server.expect_request("/0.bin").respond_with_data(data, content_type="application/octet-stream")
    result = archive(s3_client, s3_bucket, source_server.url_for("/0.bin"), fetcher)

    assert result.key == f"images/job-123/0.{ext}"
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.bytes == len(data)
    assert result.content_type == content_type
    assert not result.reused
    stored = s3_client.get_object(Bucket=s3_bucket, Key=result.key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == content_type
    assert stored["Metadata"] == {**META, "sha256": result.sha256}
    assert stored["ETag"].strip('"') == result.etag
    assert objects(s3_client, s3_bucket) == [result.key]


def test_rerun_reuses_the_verified_object_without_fetching(s3_client, s3_bucket, source_server, fetcher):
    data = image_bytes(PNG, 20_000)
    source_server.expect_request("/img").respond_with_data(data)
    first = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher)
    source_server.clear()
    source_server.expect_request("/img").respond_with_data(b"", status=410)  # expired since
    second = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher)
    assert second.reused
    assert (second.key, second.sha256, second.bytes) == (first.key, first.sha256, first.bytes)
    assert source_server.log == []
    assert objects(s3_client, s3_bucket) == [first.key]


def test_forced_rerun_rewrites_the_same_single_object(s3_client, s3_bucket, source_server, fetcher):
    data = image_bytes(JPEG, 30_000)
    source_server.expect_request("/img").respond_with_data(data)
    first = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher)
    second = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher, reuse_existing=False)
    assert len(source_server.log) == 2
    assert not second.reused
    assert (second.key, second.sha256, second.bytes) == (first.key, first.sha256, first.bytes)
    assert objects(s3_client, s3_bucket) == [first.key]
    assert s3_client.get_object(Bucket=s3_bucket, Key=first.key)["Body"].read() == data


def test_unverified_leftover_is_replaced(s3_client, s3_bucket, source_server, fetcher):
    """A crash between upload and metadata stamp leaves an object without sha256: redo it."""
    key = "images/job-123/0.png"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"partial", Metadata=META)
    data = image_bytes(PNG, 10_000)
    source_server.expect_request("/img").respond_with_data(data)
    result = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher)
    assert not result.reused
    assert result.key == key
    head = s3_client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("status", [404, 410, 403])
def test_expired_source_is_source_gone_and_stores_nothing(
    s3_client, s3_bucket, source_server, fetcher, status
):
    source_server.expect_request("/gone").respond_with_data(b"NoSuchKey", status=status)
    with pytest.raises(SourceGone):
        archive(s3_client, s3_bucket, source_server.url_for("/gone"), fetcher)
    assert objects(s3_client, s3_bucket) == []


def test_not_an_image_stores_nothing(s3_client, s3_bucket, source_server, fetcher):
    source_server.expect_request("/page").respond_with_data(b"<html>expired</html>", content_type="image/png")
    with pytest.raises(NotAnImage):
        archive(s3_client, s3_bucket, source_server.url_for("/page"), fetcher)
    assert objects(s3_client, s3_bucket) == []


def test_disallowed_source_is_never_contacted(s3_client, s3_bucket, silent_listener):
    port = silent_listener.getsockname()[1]
    with SafeFetcher(["images.example.com"]) as strict, pytest.raises(FetchRefused):
        archive(s3_client, s3_bucket, f"http://127.0.0.1:{port}/0.png", strict)
    assert_no_connection(silent_listener)
    assert objects(s3_client, s3_bucket) == []


def test_cap_exceeded_mid_multipart_upload_leaves_nothing(s3_client, s3_bucket, source_server, fetcher):
    """No Content-Length, so the cap trips while parts are already uploading: the upload is aborted."""
    source_server.expect_request("/huge").respond_with_handler(
        lambda request: Response(generated_chunks(20 * MiB), content_type="image/png")
    )
    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2)
    with pytest.raises(TooLarge):
        archive(
            s3_client,
            s3_bucket,
            source_server.url_for("/huge"),
            fetcher,
            max_bytes=12 * MiB,
            transfer_config=config,
        )
    assert objects(s3_client, s3_bucket) == []
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_announced_oversize_is_refused_before_upload(s3_client, s3_bucket, source_server, fetcher):
    source_server.expect_request("/big").respond_with_data(image_bytes(PNG, 4096))
    with pytest.raises(TooLarge):
        archive(s3_client, s3_bucket, source_server.url_for("/big"), fetcher, max_bytes=4095)
    assert objects(s3_client, s3_bucket) == []


def test_large_streamed_source_archives_correctly(s3_client, s3_bucket, source_server, fetcher):
    total = 33 * MiB
    source_server.expect_request("/large").respond_with_handler(
        lambda request: Response(generated_chunks(total), content_type="image/png")
    )
    expected = hashlib.sha256()
    for chunk in generated_chunks(total):
        expected.update(chunk)

    config = upload_transfer_config(chunk_bytes=8 * MiB, max_chunks_in_memory=2)
    result = archive(s3_client, s3_bucket, source_server.url_for("/large"), fetcher, transfer_config=config)

    assert result.bytes == total
    assert result.sha256 == expected.hexdigest()
    assert result.key.endswith("/0.png")
    stored = hashlib.sha256()
    body = s3_client.get_object(Bucket=s3_bucket, Key=result.key)["Body"]
    for chunk in body.iter_chunks(MiB):
        stored.update(chunk)
    assert stored.hexdigest() == expected.hexdigest()
    assert objects(s3_client, s3_bucket) == [result.key]


def test_truncated_source_is_a_retryable_error_and_stores_nothing(s3_client, s3_bucket, fetcher):
    """The connection drops before Content-Length bytes arrived: never archive a short image."""
    data = image_bytes(PNG, 4000)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_once():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\nContent-Type: image/png\r\n\r\n" + data[:1500]
            )

    thread = threading.Thread(target=serve_once)
    thread.start()
    try:
        with pytest.raises(FetchError) as info:
            archive(s3_client, s3_bucket, f"http://127.0.0.1:{listener.getsockname()[1]}/0.png", fetcher)
        assert info.value.retryable
    finally:
        thread.join(timeout=10)
        listener.close()
    assert objects(s3_client, s3_bucket) == []


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "streamed"])
def test_multipart_image_is_read_twice_carries_its_digest_in_metadata_and_is_reused_on_rerun(
    s3_client, s3_bucket, source_server, fetcher, announced
):
    total = 12 * MiB
    data = b"".join(generated_chunks(total))
    if announced:
        source_server.expect_request("/large").respond_with_data(data, content_type="image/png")
    else:  # no Content-Length: the archiver finds out it needs parts by reading a second one
        source_server.expect_request("/large").respond_with_handler(
            lambda request: Response(generated_chunks(total), content_type="image/png")
        )
    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2, single_put_bytes=5 * MiB)
    first = archive(s3_client, s3_bucket, source_server.url_for("/large"), fetcher, transfer_config=config)

    digest = hashlib.sha256(data).hexdigest()
    assert (first.sha256, first.bytes, first.reused) == (digest, total, False)
    stored = s3_client.get_object(Bucket=s3_bucket, Key=first.key)
    assert stored["Body"].read() == data
    assert stored["ETag"].strip('"') == first.etag and first.etag.endswith("-3")
    # The first read hashed, the second uploaded with the digest in the metadata (no copy).
    assert stored["Metadata"] == {**META, "sha256": digest}
    assert len(source_server.log) == 2
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

    source_server.clear()
    source_server.expect_request("/large").respond_with_data(b"", status=410)  # expired since
    second = archive(s3_client, s3_bucket, source_server.url_for("/large"), fetcher)
    assert second.reused
    assert (second.key, second.sha256, second.bytes) == (first.key, digest, total)
    assert source_server.log == []


def test_source_that_changes_between_the_two_reads_is_not_stored(
    s3_client, s3_bucket, source_server, fetcher
):
    """The digest in the metadata comes from the first read: a second read of other bytes aborts."""
    bodies = iter([image_bytes(PNG, 12 * MiB), image_bytes(PNG + b"x", 12 * MiB)])
    source_server.expect_request("/large").respond_with_handler(
        lambda request: Response(next(bodies), content_type="image/png")
    )
    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2, single_put_bytes=5 * MiB)
    with pytest.raises(ArchiveVerificationError, match="changed between reads"):
        archive(s3_client, s3_bucket, source_server.url_for("/large"), fetcher, transfer_config=config)
    assert objects(s3_client, s3_bucket) == []
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_unverified_multipart_leftover_is_replaced(s3_client, s3_bucket, source_server, fetcher):
    """An object without sha256 metadata (a crash mid-write, a failed check) is never reused."""
    key = "images/job-123/0.png"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=PNG + b"partial", Metadata=META)
    data = image_bytes(PNG, 6 * MiB)
    source_server.expect_request("/img").respond_with_data(data)
    config = upload_transfer_config(chunk_bytes=5 * MiB, single_put_bytes=5 * MiB)
    result = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher, transfer_config=config)
    assert not result.reused
    stored = s3_client.get_object(Bucket=s3_bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["Metadata"] == {**META, "sha256": hashlib.sha256(data).hexdigest()}


class StoreWithOtherETags:
    """The real client, but `etag_of` rewrites the ETags some calls answer with (as an SSE-KMS bucket
    answers ETags that are not MD5s, or as a store that lost bytes would). A conditional delete on a
    rewritten ETag is sent with the stored one, as the store would compare its own."""

    def __init__(self, real, etag_of, calls=("put_object", "complete_multipart_upload")):
        self._real = real
        self._etag_of = etag_of
        self._calls = calls
        self._stored = {}  # rewritten ETag -> the store's
        self.heads = 0
        self.deletes = 0

    def __getattr__(self, name):
        method = getattr(self._real, name)
        if name == "head_object":
            self.heads += 1
        if name == "delete_object":
            self.deletes += 1
            return self._delete
        if name not in self._calls:
            return method

        def rewritten(**kwargs):
            answer = method(**kwargs)
            stored = answer["ETag"].strip('"')
            answer["ETag"] = f'"{self._etag_of(stored)}"'
            self._stored[answer["ETag"].strip('"')] = stored
            return answer

        return rewritten

    def _delete(self, **kwargs):
        if "IfMatch" in kwargs:
            given = kwargs["IfMatch"].strip('"')
            kwargs["IfMatch"] = f'"{self._stored.get(given, given)}"'
        return self._real.delete_object(**kwargs)


@pytest.mark.parametrize("size", [50_000, 6 * MiB], ids=["single-put", "multipart"])
def test_etags_that_are_not_md5s_are_verified_by_head(s3_client, s3_bucket, source_server, fetcher, size):
    data = image_bytes(PNG, size)
    source_server.expect_request("/img").respond_with_data(data)
    fake = "0123456789abcdef" * 2
    store = StoreWithOtherETags(
        s3_client, lambda etag: fake, calls=("put_object", "complete_multipart_upload", "head_object")
    )
    config = upload_transfer_config(chunk_bytes=5 * MiB, single_put_bytes=5 * MiB)
    result = archive(store, s3_bucket, source_server.url_for("/img"), fetcher, transfer_config=config)
    assert store.heads == 1
    assert result.etag == fake
    assert result.sha256 == hashlib.sha256(data).hexdigest()


class ShortHead(StoreWithOtherETags):
    """ETags that are not MD5s, and a HEAD reporting fewer bytes than were sent (a store that lost
    some): the object is ours (same ETag) but not what we streamed."""

    def __getattr__(self, name):
        method = super().__getattr__(name)
        if name != "head_object":
            return method

        def head_object(**kwargs):
            answer = method(**kwargs)
            answer["ContentLength"] -= 1
            return answer

        return head_object


@pytest.mark.parametrize("size", [50_000, 6 * MiB], ids=["single-put", "multipart"])
def test_object_failing_verification_is_removed_and_never_marked(
    s3_client, s3_bucket, source_server, fetcher, size
):
    """The store's ETag proves nothing and its HEAD disagrees with what we wrote: retry, leave nothing."""
    data = image_bytes(PNG, size)
    source_server.expect_request("/img").respond_with_data(data)
    store = ShortHead(
        s3_client, lambda etag: etag[::-1], calls=("put_object", "complete_multipart_upload", "head_object")
    )
    config = upload_transfer_config(chunk_bytes=5 * MiB, single_put_bytes=5 * MiB)
    with pytest.raises(ArchiveVerificationError) as info:
        archive(store, s3_bucket, source_server.url_for("/img"), fetcher, transfer_config=config)
    assert info.value.retryable
    assert (store.heads, store.deletes) == (1, 1)
    assert objects(s3_client, s3_bucket) == []


class RacingStore(StoreWithOtherETags):
    """ETags that are not MD5s, and another run that writes its own verified object at the same key
    right after our PUT (`when="before-head"`), or between our HEAD and our delete (`"before-delete"`,
    with a HEAD that fails our check on our own object, so the run goes on to delete)."""

    def __init__(self, real, bucket, other: bytes, when: str) -> None:
        super().__init__(real, lambda etag: etag[::-1], calls=("put_object", "head_object"))
        self._bucket = bucket
        self._other = other
        self._when = when

    def other_run_writes(self, key: str) -> None:
        digest = hashlib.sha256(self._other).hexdigest()
        self._real.put_object(
            Bucket=self._bucket, Key=key, Body=self._other, Metadata={**META, "sha256": digest}
        )

    def __getattr__(self, name):
        method = super().__getattr__(name)
        if name not in ("put_object", "head_object"):
            return method

        def racing(**kwargs):
            if name == "put_object" and self._when == "before-head":
                answer = method(**kwargs)
                self.other_run_writes(kwargs["Key"])
                return answer
            if name == "head_object" and self._when == "before-delete":
                answer = method(**kwargs)
                answer["Metadata"] = {**answer["Metadata"], "sha256": "0" * 64}
                self.other_run_writes(kwargs["Key"])
                return answer
            return method(**kwargs)

        return racing


@pytest.mark.parametrize("when", ["before-head", "before-delete"])
def test_a_run_never_deletes_an_object_another_run_wrote(s3_client, s3_bucket, source_server, fetcher, when):
    """On a store whose ETags are not MD5s a failed check deletes only the object this run wrote:
    never one with another ETag (it may already be recorded as archived by the other run)."""
    ours, theirs = image_bytes(PNG, 50_000, seed=1), image_bytes(PNG, 40_000, seed=2)
    source_server.expect_request("/img").respond_with_data(ours)
    store = RacingStore(s3_client, s3_bucket, theirs, when)
    with pytest.raises(ArchiveVerificationError):
        archive(store, s3_bucket, source_server.url_for("/img"), fetcher)
    (key,) = objects(s3_client, s3_bucket)
    stored = s3_client.get_object(Bucket=s3_bucket, Key=key)
    assert stored["Body"].read() == theirs
    assert stored["Metadata"]["sha256"] == hashlib.sha256(theirs).hexdigest()


def test_parts_upload_while_the_next_is_read_with_bounded_parts_in_flight(
    s3_client, s3_bucket, source_server, fetcher
):
    total = 26 * MiB
    source_server.expect_request("/large").respond_with_handler(
        lambda request: Response(generated_chunks(total), content_type="image/png")
    )
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "parts": 0}

    class SlowParts:
        def __getattr__(self, name):
            method = getattr(s3_client, name)
            if name != "upload_part":
                return method

            def upload_part(**kwargs):
                with lock:
                    state["now"] += 1
                    state["parts"] += 1
                    state["max"] = max(state["max"], state["now"])
                try:
                    time.sleep(0.2)  # a slow store: reading must wait for a free slot, not pile up
                    return method(**kwargs)
                finally:
                    with lock:
                        state["now"] -= 1

            return upload_part

    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2)
    result = archive(SlowParts(), s3_bucket, source_server.url_for("/large"), fetcher, transfer_config=config)
    assert result.bytes == total
    assert state["parts"] == 6
    assert state["max"] == 2


def test_body_announced_within_the_single_put_limit_goes_up_whole_with_its_digest(
    s3_client, s3_bucket, source_server, fetcher
):
    """Larger than a part but no more than the memory the parts would take: one PUT, one read."""
    data = image_bytes(PNG, 12 * MiB)
    source_server.expect_request("/img").respond_with_data(data)
    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2)
    assert config.multipart_threshold == 15 * MiB
    result = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher, transfer_config=config)
    digest = hashlib.sha256(data).hexdigest()
    assert result.etag == hashlib.md5(data).hexdigest()  # a single PUT's ETag, not "...-N"
    stored = s3_client.get_object(Bucket=s3_bucket, Key=result.key)
    assert stored["Body"].read() == data
    assert stored["Metadata"] == {**META, "sha256": digest}
    assert len(source_server.log) == 1


def test_head_fallback_also_checks_the_digest_a_single_put_stored(
    s3_client, s3_bucket, source_server, fetcher
):
    data = image_bytes(PNG, 50_000)
    source_server.expect_request("/img").respond_with_data(data)
    fake = "0123456789abcdef" * 2
    store = StoreWithOtherETags(s3_client, lambda etag: fake, calls=("put_object", "head_object"))
    real_head = store.__getattr__("head_object")

    class LostMetadata:
        heads = 0

        def __getattr__(self, name):
            if name != "head_object":
                return getattr(store, name)

            def head_object(**kwargs):
                answer = real_head(**kwargs)
                answer["Metadata"] = {**answer["Metadata"], "sha256": "0" * 64}
                return answer

            return head_object

    with pytest.raises(ArchiveVerificationError):
        archive(LostMetadata(), s3_bucket, source_server.url_for("/img"), fetcher)
    assert objects(s3_client, s3_bucket) == []


def test_compressed_source_is_stored_whole_not_cut_at_its_content_length(
    s3_client, s3_bucket, source_server, fetcher
):
    """A server that gzips anyway announces the compressed size; the decoded body is longer."""
    import gzip

    data = PNG + bytes(200_000)  # compresses to a few hundred bytes
    packed = gzip.compress(data)
    source_server.expect_request("/img").respond_with_data(
        packed, headers={"Content-Encoding": "gzip"}, content_type="image/png"
    )
    result = archive(s3_client, s3_bucket, source_server.url_for("/img"), fetcher)
    assert (result.bytes, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert s3_client.get_object(Bucket=s3_bucket, Key=result.key)["Body"].read() == data


def test_a_part_the_store_reports_differently_aborts_the_upload(s3_client, s3_bucket, source_server, fetcher):
    data = image_bytes(PNG, 12 * MiB)
    source_server.expect_request("/large").respond_with_data(data, content_type="image/png")
    store = StoreWithOtherETags(s3_client, lambda etag: "0" * 32, calls=("upload_part",))
    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2, single_put_bytes=5 * MiB)
    with pytest.raises(ArchiveVerificationError, match="part 1 stored as"):
        archive(store, s3_bucket, source_server.url_for("/large"), fetcher, transfer_config=config)
    assert objects(s3_client, s3_bucket) == []
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


# --- videos and resumed uploads -------------------------------------------------------------------
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00"


class WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing in the archiver catches it, as nothing runs after a kill."""


class PartLog:
    """The real S3 client, recording the number of every part uploaded."""

    def __init__(self, s3):
        self._s3 = s3
        self.sent: list[int] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        method = getattr(self._s3, name)
        if name != "upload_part":
            return method

        def upload_part(**kwargs):
            answer = method(**kwargs)
            with self._lock:
                self.sent.append(kwargs["PartNumber"])
            return answer

        return upload_part


def archive_video(s3, bucket, url, fetcher, **kwargs) -> ArchivedObject:
    config = upload_transfer_config(chunk_bytes=5 * MiB, max_chunks_in_memory=2, single_put_bytes=5 * MiB)
    return archive(s3, bucket, url, fetcher, output_type="video", transfer_config=config, **kwargs)


def kill_after_parts(log: PartLog, parts: int):
    def heartbeat():
        if len(log.sent) >= parts:
            raise WorkerKilled

    return heartbeat


def open_parts(s3_client, bucket, key) -> set[int]:
    (upload,) = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key)["Uploads"]
    listed = s3_client.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
    return {p["PartNumber"] for p in listed["Parts"]}


def test_video_is_stored_as_mp4_and_an_image_output_refuses_it(s3_client, s3_bucket, source_server, fetcher):
    data = image_bytes(MP4, 200_000)
    source_server.expect_request("/v.mp4").respond_with_data(data, content_type="video/mp4")
    result = archive(s3_client, s3_bucket, source_server.url_for("/v.mp4"), fetcher, output_type="video")
    assert (result.key, result.content_type) == ("images/job-123/0.mp4", "video/mp4")
    stored = s3_client.get_object(Bucket=s3_bucket, Key=result.key)
    assert (stored["Body"].read(), stored["ContentType"]) == (data, "video/mp4")
    with pytest.raises(NotAnImage):
        archive(s3_client, s3_bucket, source_server.url_for("/v.mp4"), fetcher, reuse_existing=False)


def test_killed_upload_is_resumed_without_sending_its_finished_parts_again(
    s3_client, s3_bucket, source_server, fetcher
):
    data = image_bytes(MP4, 26 * MiB)  # 6 parts of 5 MiB
    source_server.expect_request("/v.mp4").respond_with_data(data, content_type="video/mp4")
    url, key = source_server.url_for("/v.mp4"), "images/job-123/0.mp4"
    killed = PartLog(s3_client)
    with pytest.raises(WorkerKilled):
        archive_video(
            killed, s3_bucket, url, fetcher, reuse_existing=False, heartbeat=kill_after_parts(killed, 2)
        )
    kept = open_parts(s3_client, s3_bucket, key)
    assert kept == set(killed.sent) and len(kept) >= 2
    assert objects(s3_client, s3_bucket) == []

    rerun = PartLog(s3_client)
    result = archive_video(rerun, s3_bucket, url, fetcher)
    assert sorted(rerun.sent) == sorted(set(range(1, 7)) - kept)
    assert result.parts_reused == len(kept)
    digest = hashlib.sha256(data).hexdigest()
    assert (result.key, result.sha256, result.bytes, result.reused) == (key, digest, len(data), False)
    stored = s3_client.get_object(Bucket=s3_bucket, Key=key)
    assert stored["Body"].read() == data
    assert (stored["ContentType"], stored["Metadata"]) == ("video/mp4", {**META, "sha256": digest})
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_resumed_upload_of_a_source_that_changed_is_not_kept(s3_client, s3_bucket, source_server, fetcher):
    """The open upload's metadata holds the digest of the bytes the killed run read: after a change
    every part is sent again and the completed object fails the digest check; the next run starts afresh."""
    old, new = image_bytes(MP4, 16 * MiB, seed=1), image_bytes(MP4, 16 * MiB, seed=2)
    source_server.expect_request("/v.mp4").respond_with_data(old, content_type="video/mp4")
    url = source_server.url_for("/v.mp4")
    killed = PartLog(s3_client)
    with pytest.raises(WorkerKilled):
        archive_video(
            killed, s3_bucket, url, fetcher, reuse_existing=False, heartbeat=kill_after_parts(killed, 1)
        )

    source_server.clear()
    source_server.expect_request("/v.mp4").respond_with_data(new, content_type="video/mp4")
    rerun = PartLog(s3_client)
    with pytest.raises(ArchiveVerificationError, match="sha256"):
        archive_video(rerun, s3_bucket, url, fetcher)
    assert sorted(rerun.sent) == [1, 2, 3, 4]  # nothing of the old bytes was kept
    assert objects(s3_client, s3_bucket) == []

    result = archive_video(s3_client, s3_bucket, url, fetcher)
    assert result.sha256 == hashlib.sha256(new).hexdigest()
    assert s3_client.get_object(Bucket=s3_bucket, Key=result.key)["Body"].read() == new
