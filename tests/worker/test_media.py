"""Pure decisions of the archive: content types, keys, caps, which parts of an open upload to keep,
and when a failed upload is aborted."""

from __future__ import annotations

import hashlib

import pytest

from worker.fetch import FetchError, SourceGone, TooLarge
from worker.media import (
    NotAnImage,
    NotAVideo,
    accepted_type,
    archive_cap,
    object_key,
    object_stem,
    sniff_media_type,
)
from worker.object_writer import ArchiveVerificationError, abandons_parts
from worker.resume import StoredPart, reusable

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
GIF = b"GIF89a\x01\x00\x01\x00"
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00"
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00"
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"


def test_keys_are_deterministic():
    assert object_key("images/", "job-1", 2, "png") == "images/job-1/2.png"
    assert object_key("images/", "job-1", 0, "mp4") == "images/job-1/0.mp4"
    assert object_stem("", "job-1", 0) == "job-1/0"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (GIF, "image/gif"),
        (MP4, "video/mp4"),
        (MOV, "video/quicktime"),
        (HEIC, None),  # an ISO BMFF still image is not a video
        (b"<html>", None),
    ],
)
def test_sniffing(head, expected):
    assert sniff_media_type(head + b"\x00" * 8) == expected


def test_an_output_accepts_only_its_own_kind():
    assert accepted_type("video", MP4, "u") == "video/mp4"
    assert accepted_type("image", PNG, "u") == "image/png"
    with pytest.raises(NotAVideo):
        accepted_type("video", PNG, "u")
    with pytest.raises(NotAnImage):
        accepted_type("image", MP4, "u")


def test_videos_have_their_own_cap_named_by_its_setting():
    assert archive_cap("video", image_max_bytes=10, video_max_bytes=20) == (20, "ARCHIVE_MAX_BYTES_VIDEO")
    assert archive_cap("image", image_max_bytes=10, video_max_bytes=20) == (10, "ARCHIVE_MAX_BYTES")


def test_a_stored_part_is_reused_only_with_the_same_size_and_md5():
    data = bytearray(b"x" * 100)
    md5 = hashlib.md5(data).digest()
    assert reusable(StoredPart(1, md5.hex(), 100), 100, md5)
    assert not reusable(None, 100, md5)
    assert not reusable(StoredPart(1, md5.hex(), 99), 100, md5)
    assert not reusable(StoredPart(1, "0" * 32, 100), 100, md5)
    assert not reusable(StoredPart(1, "not-an-md5-etag", 100), 100, md5)  # SSE-KMS: cannot prove it


@pytest.mark.parametrize(
    ("exc", "abort"),
    [
        (ArchiveVerificationError("changed"), True),
        (TooLarge("cap"), True),
        (SourceGone("gone"), True),
        (NotAVideo("html"), True),
        (ValueError("too many parts"), True),
        (FetchError("reset"), False),
        (KeyboardInterrupt(), False),
        (RuntimeError("claim lost"), False),
    ],
)
def test_only_worthless_parts_are_aborted(exc, abort):
    assert abandons_parts(exc) is abort
