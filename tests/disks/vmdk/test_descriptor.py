"""The one VMDK descriptor module: flat extents found, hostile extent names refused, the
writer's output parsed back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkeep.disks.errors import DiskFormatError, ParentDiskRefused, UnsafeDescriptorError
from vmkeep.disks.vmdk.descriptor import (
    Extent,
    check_extent_name,
    geometry,
    looks_like_descriptor,
    parse_descriptor,
    render_descriptor,
)

FLAT = b"""# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW 2048 VMFS "disk-flat.vmdk"

# The Disk Data Base
ddb.adapterType = "lsilogic"
"""

TWO_GB = b"""# Disk DescriptorFile
createType="twoGbMaxExtentFlat"
RW 4192256 FLAT "d-f001.vmdk" 0
RW 8 FLAT "d-f002.vmdk" 0
"""

DELTA = b"""# Disk DescriptorFile
createType="vmfsSparse"
parentFileNameHint="disk.vmdk"
RW 2048 VMFSSPARSE "disk-000001-delta.vmdk"
"""


def test_flat_and_multi_extent() -> None:
    d = parse_descriptor(FLAT)
    assert d.is_flat and d.capacity == 2048 * 512 and d.extents[0].file == "disk-flat.vmdk"
    two = parse_descriptor(TWO_GB)
    assert two.is_flat and len(two.extents) == 2 and two.capacity == (4192256 + 8) * 512


def test_delta_is_not_flat() -> None:
    d = parse_descriptor(DELTA)
    assert not d.is_flat and d.parent_hint == "disk.vmdk" and d.parent == "disk.vmdk"
    with pytest.raises(ParentDiskRefused):
        d.check_base("delta.vmdk")


def test_cids_are_hex_or_none() -> None:
    d = parse_descriptor(FLAT.replace(b"CID=fffffffe", b"CID=1A2B3C4D"))
    assert d.cid == "1a2b3c4d" and d.parent_cid == "ffffffff" and d.parent is None
    assert parse_descriptor(FLAT.replace(b"CID=fffffffe", b"CID=zz")).cid is None


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../other/disk-flat.vmdk", "..", "sub/disk-flat.vmdk", "C:\\x.vmdk",
     "[ds2] vm/x.vmdk", "a\\b", "c:x"],
)
def test_hostile_extents_refused(name: str) -> None:
    text = FLAT.replace(b"disk-flat.vmdk", name.encode())
    with pytest.raises(UnsafeDescriptorError):
        parse_descriptor(text)


@given(st.text(min_size=1, max_size=40))
def test_safe_names_never_escape(name: str) -> None:
    try:
        safe = check_extent_name("descriptor", name)
    except UnsafeDescriptorError:
        return
    assert "/" not in safe and "\\" not in safe and safe not in {".", ".."} and "\x00" not in safe


def test_detection_and_limits() -> None:
    assert looks_like_descriptor(FLAT)
    assert not looks_like_descriptor(b"KDMV" + bytes(508))
    assert not looks_like_descriptor(bytes(4096))
    with pytest.raises(UnsafeDescriptorError):
        parse_descriptor(b"# Disk DescriptorFile\n" + b"x" * (70 * 1024))
    with pytest.raises(UnsafeDescriptorError, match="no extents"):
        parse_descriptor(b"# Disk DescriptorFile\ncreateType=\"vmfs\"\n")


def test_malformed_extent_lines_and_nul_refused() -> None:
    with pytest.raises(DiskFormatError, match="malformed extent line"):
        parse_descriptor(FLAT.replace(b'RW 2048 VMFS "disk-flat.vmdk"', b"RW lots VMFS"))
    with pytest.raises(UnsafeDescriptorError, match="NUL"):
        parse_descriptor(FLAT.replace(b"lsilogic", b"lsi\0logic"))
    assert parse_descriptor(FLAT + bytes(1024)).capacity == 2048 * 512  # embedded: NUL padded
    # qemu-img rewrote its descriptor two bytes shorter (CID=e02862 after an 8-digit CID): the
    # new text, its NUL, the old text's last byte — read as qemu reads it, up to the NUL
    assert parse_descriptor(FLAT + b"\0\n" + bytes(400)).capacity == 2048 * 512
    smuggled = parse_descriptor(FLAT + b'\0RW 4096 VMFS "other-flat.vmdk"\n')
    assert [e.file for e in smuggled.extents] == ["disk-flat.vmdk"]  # after the NUL: ignored


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('RW 16 VMFSSPARSE "d-delta.vmdk"', UnsafeDescriptorError),
        ('RW 16 SESPARSE "d-sesparse.vmdk"', UnsafeDescriptorError),
        ('RW 16 VMFSRDM "d-rdm.vmdk"', UnsafeDescriptorError),
        ('RW 16 VMFS "vsan://52f3c9b1-a4d2"', UnsafeDescriptorError),
        ('RW 16 WEIRD "d.vmdk"', DiskFormatError),
    ],
)
def test_base_policy(line: str, error: type[Exception]) -> None:
    d = parse_descriptor(FLAT.replace(b'RW 2048 VMFS "disk-flat.vmdk"', line.encode()))
    with pytest.raises(error):
        d.check_base("d.vmdk")


def test_render_parses_back() -> None:
    text = render_descriptor(
        "monolithicFlat",
        [Extent("RW", 2048, "FLAT", 'x"-flat.vmdk'), Extent("RW", 8, "ZERO", None)],
        [("ddb.adapterType", "lsilogic"), *geometry(2048)],
        settings=[("encoding", "UTF-8")],
    )
    assert 'RW 2048 FLAT "x-flat.vmdk" 0\nRW 8 ZERO\n' in text
    d = parse_descriptor(text.encode()).check_base("x.vmdk")
    assert d.create_type == "monolithicFlat" and d.capacity == 2056 * 512
    assert d.settings["encoding"] == "UTF-8" and d.ddb["ddb.geometry.heads"] == "255"
    assert d.extents[0] == Extent("RW", 2048, "FLAT", "x-flat.vmdk", 0)
