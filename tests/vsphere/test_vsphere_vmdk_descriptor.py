"""VMDK descriptor parsing: flat extents found, hostile extent names refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkeep.vsphere.errors import UnsafeDescriptor, VSphereError
from vmkeep.vsphere.vmdk import (
    looks_like_descriptor,
    parse_descriptor,
    safe_extent_name,
    split_datastore_path,
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


def test_split_datastore_path() -> None:
    assert split_datastore_path("[ds 1] vm/a b.vmdk") == ("ds 1", "vm/a b.vmdk")
    with pytest.raises(VSphereError):
        split_datastore_path("vm/disk.vmdk")


def test_flat_and_multi_extent() -> None:
    d = parse_descriptor(FLAT)
    assert d.is_flat and d.capacity == 2048 * 512 and d.extents[0].file == "disk-flat.vmdk"
    two = parse_descriptor(TWO_GB)
    assert two.is_flat and len(two.extents) == 2 and two.capacity == (4192256 + 8) * 512


def test_delta_is_not_flat() -> None:
    d = parse_descriptor(DELTA)
    assert not d.is_flat and d.parent_hint == "disk.vmdk"


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../other/disk-flat.vmdk", "..", "sub/disk-flat.vmdk", "C:\\x.vmdk",
     "[ds2] vm/x.vmdk", "a\\b", "c:x"],
)
def test_hostile_extents_refused(name: str) -> None:
    text = FLAT.replace(b"disk-flat.vmdk", name.encode())
    with pytest.raises(UnsafeDescriptor):
        parse_descriptor(text)


@given(st.text(min_size=1, max_size=40))
def test_safe_names_never_escape(name: str) -> None:
    try:
        safe = safe_extent_name(name)
    except UnsafeDescriptor:
        return
    assert "/" not in safe and "\\" not in safe and safe not in {".", ".."} and "\x00" not in safe


def test_detection_and_limits() -> None:
    assert looks_like_descriptor(FLAT)
    assert not looks_like_descriptor(b"KDMV" + bytes(508))
    assert not looks_like_descriptor(bytes(4096))
    with pytest.raises(UnsafeDescriptor):
        parse_descriptor(b"# Disk DescriptorFile\n" + b"x" * (70 * 1024))
    with pytest.raises(UnsafeDescriptor, match="no extents"):
        parse_descriptor(b"# Disk DescriptorFile\ncreateType=\"vmfs\"\n")
