"""Deterministic small MP4 videos, padded to a target size and streamed without holding the padding.

No encoder needed: each frame is one H.264 IDR slice of I_PCM macroblocks (raw samples, valid
Constrained Baseline), in an ISO BMFF file (ftyp, moov, mdat). Padding is `free` boxes after
`mdat`, which every reader skips, so the padded file stays a valid MP4 with the same frames.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from functools import lru_cache

WIDTH, HEIGHT = 32, 32  # pixels: 2x2 macroblocks
FRAMES = 5
FRAME_MS = 1000  # one frame a second: a 5-second clip
TIMESCALE = 1000
BOX_HEADER = 8
MAX_FREE_DATA = 1 << 30
BLOCK = 1024 * 1024
_ZEROS = bytes(BLOCK)
I_PCM = 25  # mb_type of a raw-sample macroblock in an I slice


class _Bits:
    """An RBSP bit writer with Exp-Golomb codes (H.264 7.2, 9.1)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits.extend((value >> i) & 1 for i in reversed(range(n)))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align(self) -> None:
        while len(self.bits) % 8:
            self.bits.append(0)

    def trailing(self) -> bytes:
        self.bits.append(1)
        self.align()
        return bytes(int("".join(map(str, self.bits[i : i + 8])), 2) for i in range(0, len(self.bits), 8))


def _nal(header: int, rbsp: bytes) -> bytes:
    """NAL unit with emulation prevention: no 00 00 0x (x <= 3) may appear in the payload."""
    out = bytearray([header])
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sps() -> bytes:
    b = _Bits()
    b.u(8, 66)  # Baseline profile
    b.u(8, 0xC0)  # constraint_set0 and set1: Constrained Baseline
    b.u(8, 10)  # level 1.0
    b.ue(0)  # seq_parameter_set_id
    b.ue(0)  # log2_max_frame_num_minus4
    b.ue(2)  # pic_order_cnt_type 2: output order = decode order
    b.ue(1)  # max_num_ref_frames
    b.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    b.ue(WIDTH // 16 - 1)
    b.ue(HEIGHT // 16 - 1)
    b.u(1, 1)  # frame_mbs_only_flag
    b.u(1, 1)  # direct_8x8_inference_flag
    b.u(1, 0)  # frame_cropping_flag
    b.u(1, 0)  # vui_parameters_present_flag
    return _nal(0x67, b.trailing())


def _pps() -> bytes:
    b = _Bits()
    b.ue(0)  # pic_parameter_set_id
    b.ue(0)  # seq_parameter_set_id
    b.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    b.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    b.ue(0)  # num_slice_groups_minus1
    b.ue(0)  # num_ref_idx_l0_default_active_minus1
    b.ue(0)  # num_ref_idx_l1_default_active_minus1
    b.u(1, 0)  # weighted_pred_flag
    b.u(2, 0)  # weighted_bipred_idc
    b.se(0)  # pic_init_qp_minus26
    b.se(0)  # pic_init_qs_minus26
    b.se(0)  # chroma_qp_index_offset
    b.u(1, 1)  # deblocking_filter_control_present_flag
    b.u(1, 0)  # constrained_intra_pred_flag
    b.u(1, 0)  # redundant_pic_cnt_present_flag
    return _nal(0x68, b.trailing())


def _frame(idr_id: int, colour: tuple[int, int, int]) -> bytes:
    """One IDR picture: every macroblock I_PCM, flat Y/Cb/Cr (values 1-255: PCM must avoid 0)."""
    b = _Bits()
    b.ue(0)  # first_mb_in_slice
    b.ue(7)  # slice_type: I (all slices of the picture)
    b.ue(0)  # pic_parameter_set_id
    b.u(4, 0)  # frame_num
    b.ue(idr_id)  # consecutive IDR pictures need different ids
    b.u(1, 0)  # no_output_of_prior_pics_flag
    b.u(1, 0)  # long_term_reference_flag
    b.se(0)  # slice_qp_delta
    b.ue(1)  # disable_deblocking_filter_idc
    y, cb, cr = (max(1, c) for c in colour)
    for _ in range((WIDTH // 16) * (HEIGHT // 16)):
        b.ue(I_PCM)
        b.align()  # pcm_alignment_zero_bit
        for value, count in ((y, 256), (cb, 64), (cr, 64)):
            for _ in range(count):
                b.u(8, value)
    return _nal(0x65, b.trailing())


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", BOX_HEADER + len(payload)) + kind + payload


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _moov(sizes: list[int], mdat_offset: int, sps: bytes, pps: bytes) -> bytes:
    duration = FRAME_MS * len(sizes)
    avcc = _box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),
        struct.pack(">H", len(sps)),
        sps,
        bytes([1]),
        struct.pack(">H", len(pps)),
        pps,
    )
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HHIIIH", WIDTH, HEIGHT, 0x480000, 0x480000, 0, 1),
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x18, -1),
        avcc,
    )
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        _full(b"stts", 0, 0, struct.pack(">III", 1, len(sizes), FRAME_MS)),
        _full(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, len(sizes), 1)),
        _full(b"stsz", 0, 0, struct.pack(">II", 0, len(sizes)), *(struct.pack(">I", s) for s in sizes)),
        _full(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset)),
    )
    minf = _box(
        b"minf",
        _full(b"vmhd", 0, 1, bytes(8)),
        _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1))),
        stbl,
    )
    mdia = _box(
        b"mdia",
        _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, duration, 0x55C4, 0)),
        _full(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00"),
        minf,
    )
    tkhd = _full(
        b"tkhd",
        0,
        3,  # enabled, in movie
        struct.pack(">IIII", 0, 0, 1, 0),
        struct.pack(">I", duration),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),
        _MATRIX,
        struct.pack(">II", WIDTH << 16, HEIGHT << 16),
    )
    mvhd = _full(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, TIMESCALE, duration),
        struct.pack(">IH", 0x10000, 0x100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", 2),  # next_track_ID
    )
    return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))


@lru_cache(maxsize=256)
def base_mp4(seed: str) -> bytes:
    """A small, real H.264 MP4 (32x32, 5 frames, 5 s) whose colours depend only on `seed`."""
    digest = hashlib.sha256(seed.encode()).digest()
    samples = []
    for i in range(FRAMES):
        nal = _frame(i % 2, (digest[3 * i], digest[3 * i + 1], digest[3 * i + 2]))
        samples.append(struct.pack(">I", len(nal)) + nal)
    sps, pps = _sps(), _pps()
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    sizes = [len(s) for s in samples]
    # moov's size does not depend on the offset it holds, so measure it once with a dummy.
    offset = len(ftyp) + len(_moov(sizes, 0, sps, pps)) + BOX_HEADER
    return ftyp + _moov(sizes, offset, sps, pps) + _box(b"mdat", *samples)


def duration_seconds() -> float:
    return FRAMES * FRAME_MS / TIMESCALE


def padding_plan(base_size: int, target: int | None) -> list[int]:
    """Data sizes of the `free` boxes that bring an MP4 of `base_size` bytes to `target` bytes
    (one empty box when the gap is smaller than a box header: overshoot by a few bytes)."""
    if target is None or target <= base_size:
        return []
    gap = target - base_size
    sizes = []
    while gap > 0:
        data = max(0, min(gap - BOX_HEADER, MAX_FREE_DATA))
        sizes.append(data)
        gap -= data + BOX_HEADER
    return sizes


def total_size(base: bytes, plan: list[int]) -> int:
    return len(base) + sum(size + BOX_HEADER for size in plan)


def stream_mp4(base: bytes, plan: list[int]) -> Iterator[bytes]:
    yield base
    for size in plan:
        yield struct.pack(">I", size + BOX_HEADER) + b"free"
        left = size
        while left:
            block = _ZEROS if left >= BLOCK else _ZEROS[:left]
            left -= len(block)
            yield block
