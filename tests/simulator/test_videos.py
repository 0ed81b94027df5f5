"""The simulator's MP4 bytes: padding to any size, and NAL units free of start-code emulation."""

from __future__ import annotations

import re
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from kling.simulator import videos

EMULATION = re.compile(b"\x00\x00[\x00-\x03]")


def nal_units(mp4: bytes) -> list[bytes]:
    """The SPS, the PPS (from avcC) and every sample's NAL units (4-byte lengths in mdat)."""
    avcc = mp4.index(b"avcC") + 4
    sps_len = struct.unpack(">H", mp4[avcc + 6 : avcc + 8])[0]
    sps = mp4[avcc + 8 : avcc + 8 + sps_len]
    pps_at = avcc + 8 + sps_len + 1
    pps = mp4[pps_at + 2 : pps_at + 2 + struct.unpack(">H", mp4[pps_at : pps_at + 2])[0]]
    mdat = mp4.index(b"mdat") + 4
    units, pos = [sps, pps], mdat
    while pos < len(mp4):
        size = struct.unpack(">I", mp4[pos : pos + 4])[0]
        units.append(mp4[pos + 4 : pos + 4 + size])
        pos += 4 + size
    assert pos == len(mp4)
    return units


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_no_nal_unit_emulates_a_start_code(seed: str) -> None:
    units = nal_units(videos.base_mp4(seed))
    assert [u[0] for u in units] == [0x67, 0x68] + [0x65] * videos.FRAMES
    for unit in units:
        assert not EMULATION.search(unit[1:])
        assert unit[-1] != 0  # the stop bit ends every RBSP


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert videos.base_mp4("a/0/raw") == videos.base_mp4("a/0/raw")
    assert videos.base_mp4("a/0/raw") != videos.base_mp4("a/1/raw")


@given(st.integers(min_value=0, max_value=3 * 1024 * 1024))
@settings(max_examples=30, deadline=None)
def test_padding_reaches_the_target_or_overshoots_by_less_than_a_box_header(target: int) -> None:
    base = videos.base_mp4("pad")
    plan = videos.padding_plan(len(base), target)
    size = videos.total_size(base, plan)
    if target <= len(base):
        assert plan == [] and size == len(base)
    else:
        assert target <= size < target + videos.BOX_HEADER


def test_streamed_padding_is_what_total_size_says_and_ends_in_free_boxes() -> None:
    base = videos.base_mp4("stream")
    plan = videos.padding_plan(len(base), len(base) + 2 * videos.BLOCK + 5)
    data = b"".join(videos.stream_mp4(base, plan))
    assert len(data) == videos.total_size(base, plan)
    assert data.startswith(base)
    tail = data[len(base) :]
    assert tail[4:8] == b"free"
    assert struct.unpack(">I", tail[:4])[0] == len(tail)


def test_huge_targets_split_into_bounded_boxes() -> None:
    plan = videos.padding_plan(8_000, 3 * 1024**3)
    # A box size is a 32-bit field: no box may pass 4 GiB, ours stop at 1 GiB.
    assert all(size <= videos.MAX_FREE_DATA for size in plan)
    assert len(plan) == 3
    assert 8_000 + sum(size + videos.BOX_HEADER for size in plan) == 3 * 1024**3
