"""Deterministic PNG images, padded to a target size and streamed without holding the padding."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterator
from functools import lru_cache

from PIL import Image, ImageDraw

# Private, ancillary, safe-to-copy chunk type: decoders skip it, so the padded file stays valid.
PAD_CHUNK_TYPE = b"kpAd"
CHUNK_OVERHEAD = 12  # length + type + CRC
MAX_CHUNK_DATA = 64 * 1024 * 1024
BLOCK = 1024 * 1024
_ZEROS = bytes(BLOCK)


@lru_cache(maxsize=256)
def base_png(seed: str, width: int, height: int) -> bytes:
    """A small, real PNG whose pixels depend only on `seed` and the size."""
    digest = hashlib.sha256(seed.encode()).digest()
    background = (digest[0], digest[1], digest[2])
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    # A few seed-derived rectangles make distinct images differ visibly, not only in metadata.
    for i in range(4):
        x0, y0 = digest[3 + i] % width, digest[7 + i] % height
        x1, y1 = x0 + 1 + digest[11 + i] % width, y0 + 1 + digest[15 + i] % height
        draw.rectangle((x0, y0, x1, y1), fill=(digest[19 + i], digest[23 + i], digest[27 + i]))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def padding_plan(base_size: int, target: int | None) -> list[int]:
    """Data sizes of the padding chunks that bring a PNG of `base_size` bytes to `target` bytes.

    When the gap is smaller than one chunk header, one empty chunk is added, so the result
    overshoots by a few bytes rather than missing the target.
    """
    if target is None or target <= base_size:
        return []
    gap = target - base_size
    sizes = []
    while gap > 0:
        data = max(0, min(gap - CHUNK_OVERHEAD, MAX_CHUNK_DATA))
        sizes.append(data)
        gap -= data + CHUNK_OVERHEAD
    return sizes


def total_size(base: bytes, plan: list[int]) -> int:
    return len(base) + sum(size + CHUNK_OVERHEAD for size in plan)


def stream_png(base: bytes, plan: list[int]) -> Iterator[bytes]:
    """Yield the padded PNG: chunks go just before IEND (the last 12 bytes)."""
    yield base[:-CHUNK_OVERHEAD]
    for size in plan:
        yield struct.pack(">I", size) + PAD_CHUNK_TYPE
        crc = zlib.crc32(PAD_CHUNK_TYPE)
        left = size
        while left:
            block = _ZEROS if left >= BLOCK else _ZEROS[:left]
            crc = zlib.crc32(block, crc)
            left -= len(block)
            yield block
        yield struct.pack(">I", crc & 0xFFFFFFFF)
    yield base[-CHUNK_OVERHEAD:]


def sha256_of(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()
