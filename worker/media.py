"""What an archived output is: its content type told by its first bytes, the object key that type
gives it, and the byte cap for its kind (image or video). Pure functions, no I/O."""

from __future__ import annotations

from worker.fetch import FetchFailure

SNIFF_BYTES = 16  # enough for `sniff_media_type`

IMAGE = "image"
VIDEO = "video"

# Content type sniffed from the bytes -> object key extension, per kind of output.
IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
VIDEO_EXTENSIONS = {"video/mp4": "mp4", "video/quicktime": "mov"}
EXTENSIONS = {**IMAGE_EXTENSIONS, **VIDEO_EXTENSIONS}

# ISO BMFF brands of still images (HEIF, AVIF): an `ftyp` box does not make a file a video.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"})


class WrongMediaType(FetchFailure):
    """The source answered 200 but its bytes are not a kind of file this output may be."""


class NotAnImage(WrongMediaType):
    """An image output whose body is not a PNG, JPEG, WEBP or GIF image."""


class NotAVideo(WrongMediaType):
    """A video output whose body is not an MP4 (or QuickTime) file."""


def sniff_media_type(head: bytes) -> str | None:
    """The content type told by the first bytes (12 are enough), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(head) >= 12 and head[4:8] == b"ftyp":  # ISO BMFF: the file opens with its `ftyp` box
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        return None if brand in _IMAGE_BRANDS else "video/mp4"
    return None


def accepted_type(output_type: str, head: bytes, url: str) -> str:
    """The content type of an output of `output_type` ("image"|"video") whose body starts with
    `head`; NotAnImage / NotAVideo when the bytes are not that kind of file."""
    content_type = sniff_media_type(head)
    if output_type == VIDEO:
        if content_type not in VIDEO_EXTENSIONS:
            raise NotAVideo("the source is not an MP4 video", url=url)
        return content_type
    if content_type not in IMAGE_EXTENSIONS:
        raise NotAnImage("the source is not a PNG, JPEG, WEBP or GIF image", url=url)
    return content_type


def archive_cap(output_type: str, *, image_max_bytes: int, video_max_bytes: int) -> tuple[int, str]:
    """(byte cap, name of the setting that sets it) for an output of `output_type`."""
    if output_type == VIDEO:
        return video_max_bytes, "ARCHIVE_MAX_BYTES_VIDEO"
    return image_max_bytes, "ARCHIVE_MAX_BYTES"


def object_stem(prefix: str, job_id: str, index: int) -> str:
    """The key of output `index` of `job_id` without its extension."""
    return f"{prefix}{job_id}/{index}"


def object_key(prefix: str, job_id: str, index: int, ext: str) -> str:
    """The deterministic object key `{prefix}{job_id}/{index}.{ext}`."""
    return f"{object_stem(prefix, job_id, index)}.{ext}"
