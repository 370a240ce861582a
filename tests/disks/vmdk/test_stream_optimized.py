"""The streamOptimized reader: qemu-img's streams decode to the same bytes as qemu-img reads;
hostile streams (bad marker, oversized or bomb grains, out-of-order grains, truncation, bad
header) raise StreamFormatError (exit 14) and never a bare parser exception."""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.disks.vmdk.stream_optimized import (
    GRAIN_MARKER,
    MARKER_EOS,
    MARKER_GT,
    SECTOR,
    SparseHeader,
    StreamFormatError,
    StreamReader,
    pack_meta_marker,
)

GRAIN = 64 * 1024


def build(capacity: int, grains: list[tuple[int, bytes]], *, eos: bool = True,
          header: SparseHeader | None = None, raw_grains: list[bytes] | None = None) -> bytes:
    """A minimal stream: header, descriptor, grains (offset, data) in the given order, a GT
    marker, EOS."""
    h = header or SparseHeader(capacity_sectors=capacity // SECTOR)
    out = bytearray(h.pack())
    desc = b'# Disk DescriptorFile\ncreateType="streamOptimized"\n'
    out += desc.ljust(SECTOR * h.descriptor_sectors, b"\0")
    out += bytes(max(0, h.overhead_sectors * SECTOR - len(out)))
    for off, data in grains:
        payload = zlib.compress(data)
        rec = GRAIN_MARKER.pack(off // SECTOR, len(payload)) + payload
        out += rec.ljust(-(-len(rec) // SECTOR) * SECTOR, b"\0")
    for rec in raw_grains or []:
        out += rec.ljust(-(-len(rec) // SECTOR) * SECTOR, b"\0")
    out += pack_meta_marker(4, MARKER_GT) + bytes(4 * SECTOR)
    if eos:
        out += pack_meta_marker(0, MARKER_EOS)
    return bytes(out)


def decode(data: bytes) -> bytes:
    r = StreamReader(io.BytesIO(data), "test")
    img = bytearray(r.capacity)
    for off, g in r.grains():
        img[off : off + len(g)] = g
    assert r.finished
    return bytes(img)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_qemu_img_streams_decode_like_qemu_reads_them(tmp_path: Path) -> None:
    rng = random.Random(5)
    size = 3 * 1024 * 1024 + 512 * 7  # a tail grain shorter than a grain
    raw = bytearray(size)
    for _ in range(40):
        off = rng.randrange(size - 5000)
        raw[off : off + 5000] = rng.randbytes(5000)
    (tmp_path / "d.raw").write_bytes(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(tmp_path / "d.raw"), str(tmp_path / "d.vmdk")],
                   check=True)
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(tmp_path / "d.vmdk"),
                    str(tmp_path / "back.raw")], check=True)
    assert decode((tmp_path / "d.vmdk").read_bytes()) == (tmp_path / "back.raw").read_bytes()


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.integers(0, 31), st.binary(min_size=1, max_size=64), max_size=8))
def test_round_trip_of_sparse_grains(content: dict[int, bytes]) -> None:
    capacity = 32 * GRAIN
    expected = bytearray(capacity)
    grains = []
    for g in sorted(content):
        data = (content[g] * (GRAIN // len(content[g]) + 1))[:GRAIN]
        expected[g * GRAIN : (g + 1) * GRAIN] = data
        grains.append((g * GRAIN, data))
    assert decode(build(capacity, grains)) == bytes(expected)


def test_decode_callback_skips_grains_without_inflating() -> None:
    stream = build(4 * GRAIN, [(0, b"a" * GRAIN), (2 * GRAIN, b"b" * GRAIN)])
    r = StreamReader(io.BytesIO(stream))
    assert [off for off, _ in r.grains(decode=lambda off, n: off >= GRAIN)] == [2 * GRAIN]
    assert r.finished


HOSTILE = {
    "unaligned grain": lambda: build(4 * GRAIN, [(512, b"x" * GRAIN)]),
    "grain past the end": lambda: build(4 * GRAIN, [(4 * GRAIN, b"x" * GRAIN)]),
    "out of order": lambda: build(4 * GRAIN, [(GRAIN, b"x" * GRAIN), (0, b"y" * GRAIN)]),
    "repeated grain": lambda: build(4 * GRAIN, [(0, b"x" * GRAIN), (0, b"y" * GRAIN)]),
    "short grain": lambda: build(4 * GRAIN, [(0, b"x" * 100)]),
    "bomb grain": lambda: build(4 * GRAIN, [(0, b"x" * (4 * GRAIN))]),
    "oversized grain": lambda: build(
        4 * GRAIN, [], raw_grains=[GRAIN_MARKER.pack(0, 10 * GRAIN) + os.urandom(10 * GRAIN)]
    ),
    "garbage grain": lambda: build(
        4 * GRAIN, [], raw_grains=[GRAIN_MARKER.pack(0, 600) + os.urandom(600)]
    ),
    "unknown marker": lambda: build(4 * GRAIN, [], raw_grains=[struct.pack("<QII", 1, 0, 9)]),
    "huge metadata": lambda: build(
        4 * GRAIN, [], raw_grains=[struct.pack("<QII", 1 << 40, 0, MARKER_GT)]
    ),
    "no end marker": lambda: build(4 * GRAIN, [(0, b"x" * GRAIN)], eos=False),
    "truncated": lambda: build(4 * GRAIN, [(0, os.urandom(GRAIN))])[:-2000],
    "not a vmdk": lambda: b"\0" * 4096,
    "flat sparse, not a stream": lambda: build(
        4 * GRAIN, [], header=SparseHeader(capacity_sectors=4 * GRAIN // SECTOR, flags=3)
    ),
    "absurd capacity": lambda: build(
        4 * GRAIN, [], header=SparseHeader(capacity_sectors=1 << 60)
    ),
    "odd grain size": lambda: build(
        4 * GRAIN, [], header=SparseHeader(capacity_sectors=512, grain_sectors=100)
    ),
    "descriptor past the grains": lambda: build(
        4 * GRAIN, [], header=SparseHeader(capacity_sectors=512, descriptor_sectors=100,
                                           overhead_sectors=50)
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_streams_raise_a_typed_error(case: str) -> None:
    with pytest.raises(StreamFormatError) as err:
        decode(HOSTILE[case]())
    assert err.value.exit_code == 14
