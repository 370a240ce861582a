"""open_disk: raw and VMDK formats (made by qemu-img), allocation maps, descriptor safety."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.disks import disk_builders as b
from tests.hypothesis_profile import SUPPRESSED
from vmkeep.disks.errors import DiskFormatError, ParentDiskRefused, UnsafeDescriptorError
from vmkeep.disks.image import merge_ranges
from vmkeep.disks.vmdk.descriptor import check_extent_name
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.errors import InputError


def _same_content(raw_path: Path, image_path: Path) -> None:
    raw, img = open_disk(raw_path, format="raw"), open_disk(image_path)
    try:
        assert img.size == raw.size
        img_ranges = img.allocated_extents()
        for off, length in img_ranges:
            raw.seek(off)
            img.seek(off)
            assert img.read(length) == raw.read(length), (off, length)
        # data the raw image has outside the image's allocation map must be zeros
        covered = merge_ranges(img_ranges)
        for off, length in raw.allocated_extents():
            pos = off
            for c_off, c_len in covered:
                if c_off + c_len <= pos or c_off >= off + length:
                    continue
                if c_off > pos:
                    raw.seek(pos)
                    assert raw.read(c_off - pos).count(0) == c_off - pos
                pos = max(pos, c_off + c_len)
            if pos < off + length:
                raw.seek(pos)
                assert raw.read(off + length - pos).count(0) == off + length - pos
    finally:
        raw.close()
        img.close()


@pytest.mark.parametrize("which", ["vmdk_sparse", "vmdk_stream", "vmdk_flat"])
def test_vmdk_reads_like_the_raw_disk(disks, which):
    _same_content(disks.gpt, getattr(disks, which))


def test_formats_detected_by_content(disks, tmp_path):
    renamed = tmp_path / "disk.raw"  # a sparse VMDK under a misleading name
    renamed.symlink_to(disks.vmdk_sparse)
    with open_disk(renamed) as d:
        assert d.format == "vmdk:monolithicSparse"
    with open_disk(disks.vmdk_stream) as d:
        assert d.format == "vmdk:streamOptimized"
    with open_disk(disks.vmdk_flat) as d:
        assert d.format == "vmdk:monolithicFlat"
    with open_disk(disks.gpt) as d:
        assert d.format == "raw"
    # forced raw: a guest-written KDMV header does not change how its disk is read
    with open_disk(disks.vmdk_sparse, format="raw") as d:
        assert d.format == "raw" and d.size == os.path.getsize(disks.vmdk_sparse)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    raw = d / "r.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(700_000))
        f.seek(5 * b.MiB)
        f.write(b"tail data")
        f.truncate(8 * b.MiB)
    for sub in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "monolithicSparse"):
        b.run(
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            f"subformat={sub}",
            raw,
            d / f"{sub}.vmdk",
        )
    return d


@pytest.mark.parametrize("sub", ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
def test_split_extents(small, sub):
    _same_content(small / "r.raw", small / f"{sub}.vmdk")
    with open_disk(small / f"{sub}.vmdk") as d:
        assert d.format == f"vmdk:{sub}"


def test_file_like_sources(small):
    data = (small / "monolithicSparse.vmdk").read_bytes()
    raw = (small / "r.raw").read_bytes()
    with open_disk(io.BytesIO(data)) as d:
        assert hashlib.sha256(d.read()).digest() == hashlib.sha256(raw).digest()
    desc = (small / "twoGbMaxExtentFlat.vmdk").read_bytes()
    with pytest.raises(DiskFormatError):
        open_disk(io.BytesIO(desc))
    opened: list[str] = []

    def opener(name: str):
        opened.append(name)
        return open(small / name, "rb")

    with open_disk(io.BytesIO(desc), extent_opener=opener) as d:
        assert d.read() == raw
    assert opened == ["twoGbMaxExtentFlat-f001.vmdk"]


def _descriptor(extent_line: str, extra: str = "") -> str:
    return (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\n{extra}\n# Extent description\n{extent_line}\n'
    )


@pytest.mark.parametrize(
    ("line", "extra", "error"),
    [
        ('RW 16 FLAT "/etc/passwd" 0', "", UnsafeDescriptorError),
        ('RW 16 FLAT "../secret-flat.vmdk" 0', "", UnsafeDescriptorError),
        ('RW 16 FLAT "sub/../../x-flat.vmdk" 0', "", UnsafeDescriptorError),
        ('RW 16 FLAT "..\\\\x-flat.vmdk" 0', "", UnsafeDescriptorError),
        ('RW 16 FLAT "C:\\\\x-flat.vmdk" 0', "", UnsafeDescriptorError),
        ('RW 16 FLAT ".." 0', "", UnsafeDescriptorError),
        ('RW 16 VMFSRDM "disk-rdm.vmdk"', "", UnsafeDescriptorError),
        ('RW 16 VMFSSPARSE "disk-delta.vmdk"', "", UnsafeDescriptorError),
        ('RW 16 FLAT "ok-flat.vmdk" 0', 'parentFileNameHint="/etc/base.vmdk"', ParentDiskRefused),
        ('RW 16 FLAT "ok-flat.vmdk" 0', "parentCID=0badf00d", ParentDiskRefused),
        ("RW 16 FLAT /etc/passwd 0", "", DiskFormatError),
    ],
)
def test_hostile_descriptors_never_open_host_files(tmp_path, line, extra, error, monkeypatch):
    folder = tmp_path / "vm"
    folder.mkdir()
    (tmp_path / "secret-flat.vmdk").write_bytes(b"S" * 8192)
    (folder / "ok-flat.vmdk").write_bytes(bytes(8192))
    desc = folder / "disk.vmdk"
    text = _descriptor(line, extra)
    if "parentCID" in extra:
        text = text.replace("parentCID=ffffffff\n", "")
    desc.write_text(text)
    real_open = os.open

    def spy(path, *args, **kw):  # only the descriptor folder may be opened
        assert "secret" not in str(path) and "passwd" not in str(path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(error) as info:
        open_disk(desc)
    assert isinstance(info.value, InputError) and info.value.exit_code == 14


def test_symlinked_extent_is_not_followed(tmp_path):
    (tmp_path / "outside").write_bytes(b"x" * 8192)
    (tmp_path / "x-flat.vmdk").symlink_to(tmp_path / "outside")
    desc = tmp_path / "x.vmdk"
    desc.write_text(_descriptor('RW 16 FLAT "x-flat.vmdk" 0'))
    with pytest.raises(DiskFormatError):
        open_disk(desc)


def test_short_flat_extent_is_an_error(tmp_path):
    (tmp_path / "x-flat.vmdk").write_bytes(bytes(4096))
    desc = tmp_path / "x.vmdk"
    desc.write_text(_descriptor('RW 16 FLAT "x-flat.vmdk" 0'))
    with pytest.raises(DiskFormatError, match="needs 8192"):
        open_disk(desc)


def test_sparse_with_embedded_parent_is_refused(small, tmp_path):
    data = bytearray((small / "monolithicSparse.vmdk").read_bytes())
    at = data.index(b"parentCID=ffffffff")
    data[at : at + 18] = b"parentCID=0badf00d"
    bad = tmp_path / "delta.vmdk"
    bad.write_bytes(bytes(data))
    with pytest.raises(ParentDiskRefused):
        open_disk(bad)


def test_extent_name_check():
    assert check_extent_name("d", "disk-flat.vmdk") == "disk-flat.vmdk"
    for bad in ["", "/a", "a/b", "a\\b", "..", ".", "a\0b", "x" * 300, "C:x"]:
        with pytest.raises(UnsafeDescriptorError):
            check_extent_name("d", bad)


@settings(
    max_examples=60, deadline=None,
    suppress_health_check=[*SUPPRESSED, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupt_sparse_headers_fail_typed(small, flips):
    data = bytearray((small / "monolithicSparse.vmdk").read_bytes()[: 64 * 1024])
    for pos, val in flips:
        data[4 + pos % (len(data) - 4)] = val  # keep the magic so the sparse parser runs
    try:
        with open_disk(io.BytesIO(bytes(data))) as d:
            d.allocated_extents()
            d.seek(0)
            d.read(1 << 20)
    except DiskFormatError:
        pass


def test_unreadable_paths_are_typed(tmp_path):
    with pytest.raises(DiskFormatError):
        open_disk(tmp_path / "missing.vmdk")
    with pytest.raises(DiskFormatError):
        open_disk(tmp_path)  # a directory


def test_only_files_and_block_devices_are_opened_as_images(tmp_path: Path) -> None:
    """``backup image`` of a FIFO waited forever for a writer; of a character device
    (``/dev/null``) it stored an empty disk.  Both are refused at once, as a directory is."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a FIFO"), (Path("/dev/null"), "a character device"),
                       (tmp_path, "a directory")):
        with pytest.raises(DiskFormatError, match=what) as err:
            open_disk(path)
        assert err.value.exit_code == 14
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with open_disk(empty) as image:  # an empty file is an (empty) image
        assert image.size == 0
