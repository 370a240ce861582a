"""The streamOptimized VMDK writer, read back by two independent readers: ``qemu-img`` and
dissect.hypervisor (behind :func:`vmkeep.disks.vmdk.opener.open_disk`)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_profile import SUPPRESSED
from vmkeep.disks.vmdk.descriptor import parse_descriptor
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.disks.vmdk.stream_optimized import StreamReader
from vmkeep.disks.vmdk.stream_writer import GRAIN, GT_COVERAGE, StreamOptions, stream

MiB = 1 << 20
needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def _write(capacity: int, pieces: list[tuple[int, bytes | None]], path: Path) -> int:
    with open(path, "wb") as fh:
        for part in stream(capacity, pieces, StreamOptions(name=path.name)):
            fh.write(part)
    return path.stat().st_size


def _qemu_raw(vmdk: Path, raw: Path) -> bytes:
    subprocess.run(["qemu-img", "check", "-f", "vmdk", str(vmdk)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(raw)],
                   check=True, capture_output=True)
    return raw.read_bytes()


def _image(capacity: int, writes: list[tuple[int, bytes]]) -> bytearray:
    disk = bytearray(capacity)
    for off, data in writes:
        disk[off : off + len(data)] = data[: capacity - off]
    return disk


def _pieces(disk: bytes, chunk: int) -> list[tuple[int, bytes | None]]:
    out: list[tuple[int, bytes | None]] = []
    for off in range(0, len(disk), chunk):
        data = bytes(disk[off : off + chunk])
        out.append((off, None if not any(data) else data))
    return out


@needs_qemu
def test_sparse_disk_reads_back_through_qemu_and_sends_only_its_data(tmp_path):
    capacity = 3 * GT_COVERAGE + 3 * 4096  # three full grain tables and a partial grain
    disk = _image(capacity, [(5, b"boot"), (GT_COVERAGE + 7 * GRAIN, os.urandom(300_000)),
                             (capacity - 100, b"z" * 100)])
    size = _write(capacity, _pieces(disk, 4 * MiB), tmp_path / "d.vmdk")
    assert _qemu_raw(tmp_path / "d.vmdk", tmp_path / "d.raw") == disk
    assert size < 400_000 + 64 * 1024  # thin: zeros are not in the stream
    with open_disk(tmp_path / "d.vmdk") as img:
        assert img.size == capacity and img.read() == disk


@needs_qemu
def test_an_empty_disk_is_a_valid_stream_of_a_few_sectors(tmp_path):
    size = _write(8 * MiB, [(0, None)], tmp_path / "e.vmdk")
    assert size < 70 * 1024
    assert _qemu_raw(tmp_path / "e.vmdk", tmp_path / "e.raw") == bytes(8 * MiB)


def test_bad_pieces_are_refused():
    with pytest.raises(ValueError, match="aligned"):
        list(stream(MiB, [(512, b"x")]))
    with pytest.raises(ValueError, match="outside"):
        list(stream(MiB, [(0, bytes(2 * MiB))]))
    with pytest.raises(ValueError, match="order"):
        list(stream(MiB, [(GRAIN, b"x"), (0, b"y")]))


writes = st.lists(
    st.tuples(st.integers(0, 5 * MiB), st.binary(min_size=1, max_size=3 * GRAIN)), max_size=6
)


@needs_qemu
@settings(max_examples=20, deadline=None, suppress_health_check=SUPPRESSED)
@given(
    capacity_sectors=st.integers(1, 6 * MiB // 512),
    writes=writes,
    chunk=st.sampled_from([GRAIN, 4 * GRAIN, MiB]),
)
def test_round_trip_through_qemu_img(capacity_sectors, writes, chunk):
    capacity = capacity_sectors * 512
    disk = bytes(_image(capacity, [(o, d) for o, d in writes if o < capacity]))
    with tempfile.TemporaryDirectory() as tmp:
        vmdk, raw = Path(tmp) / "r.vmdk", Path(tmp) / "r.raw"
        _write(capacity, _pieces(disk, chunk), vmdk)
        assert _qemu_raw(vmdk, raw) == disk


@settings(max_examples=40, deadline=None)
@given(capacity_sectors=st.integers(1, 6 * MiB // 512), writes=writes)
def test_round_trip_through_dissect(capacity_sectors, writes):
    capacity = capacity_sectors * 512
    disk = bytes(_image(capacity, [(o, d) for o, d in writes if o < capacity]))
    data = b"".join(stream(capacity, _pieces(disk, 4 * GRAIN)))
    with open_disk(io.BytesIO(data)) as img:
        assert img.size == capacity and img.read() == disk


@settings(max_examples=40, deadline=None)
@given(capacity_sectors=st.integers(1, 6 * MiB // 512), writes=writes)
def test_round_trip_through_our_own_reader(capacity_sectors, writes):
    """The writer stands on the reader's header and constants: what it writes, the streaming
    reader decodes (header checks, descriptor, grains in order, end marker)."""
    capacity = capacity_sectors * 512
    disk = bytes(_image(capacity, [(o, d) for o, d in writes if o < capacity]))
    data = b"".join(stream(capacity, _pieces(disk, 4 * GRAIN), StreamOptions(name="r.vmdk")))
    reader = StreamReader(io.BytesIO(data), "r.vmdk")
    out = bytearray(capacity)
    for off, grain in reader.grains():
        out[off : off + len(grain)] = grain
    assert reader.finished and reader.capacity == capacity and bytes(out) == disk
    desc = parse_descriptor(reader.descriptor.encode(), "r.vmdk")
    assert desc.create_type == "streamOptimized" and desc.capacity >= capacity
    assert desc.extents[0].file == "r.vmdk" and desc.extents[0].kind == "SPARSE"
