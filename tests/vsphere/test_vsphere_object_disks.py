"""vSAN / vVol descriptors are a supported datastore type (object-backed, read through NFC),
not "hostile"; malformed object URIs still are; ``--transport auto`` picks per datastore type."""

from __future__ import annotations

import pytest

from vmkeep.disks.errors import UnsafeDescriptorError
from vmkeep.disks.vmdk.descriptor import parse_descriptor
from vmkeep.vsphere import transport_choice
from vmkeep.vsphere.errors import (
    DatastoreIOError,
    ObjectBackedDisk,
    UnsupportedDisk,
)

VSAN = b"""# Disk DescriptorFile
version=4
createType="vmfs"
RW 32768 VMFS "vsan://52f3c9b1-a4d2-e8f0-1b2c-3d4e5f607182"
"""
VSAN_DELTA = b"""# Disk DescriptorFile
createType="vsanSparse"
parentFileNameHint="vsan01.vmdk"
RW 32768 VSANSPARSE "vsan://9a8b7c6d-1e2f-3a4b-5c6d-7e8f9a0b1c2d"
"""
VVOL = b"""# Disk DescriptorFile
createType="vmfs"
RW 32768 VMFS "vvol://5a1b2c3d4e5f6071-8293a4b5c6d7e8f9/rfc4122.0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"
"""


@pytest.mark.parametrize(("text", "scheme"), [(VSAN, "vsan"), (VSAN_DELTA, "vsan"), (VVOL, "vvol")])
def test_object_extents_are_recognised(text: bytes, scheme: str) -> None:
    d = parse_descriptor(text)
    assert d.object_backed == scheme and not d.is_flat
    assert d.capacity == 32768 * 512


@pytest.mark.parametrize(
    "uri",
    ["vsan://../../etc/passwd", "vvol://a/../b", "vsan:///abs", "nfs://host/x", "vsan://a/b/c",
     "vsan://a b"],
)
def test_malformed_object_uris_stay_refused(uri: str) -> None:
    with pytest.raises(UnsafeDescriptorError):
        parse_descriptor(VSAN.replace(b"vsan://52f3c9b1-a4d2-e8f0-1b2c-3d4e5f607182", uri.encode()))


def test_object_backed_disk_error_names_the_fix() -> None:
    err = ObjectBackedDisk("[vsanDatastore] a/a.vmdk", "vsan")
    assert isinstance(err, UnsupportedDisk) and err.exit_code == 16
    assert "--transport nfc" in str(err) and "vsan" in str(err)


@pytest.mark.parametrize(
    ("ds_type", "transport"),
    [("VMFS", "https"), ("NFS", "https"), ("NFS41", "https"), ("vsan", "nfc"), ("VVOL", "nfc"),
     (None, "https")],
)
def test_auto_picks_per_datastore_type(ds_type: str | None, transport: str) -> None:
    choice = transport_choice.choose("auto", ds_type)
    assert choice.transport == transport and (ds_type or "unknown") in choice.reason
    assert choice.to_json()["version"] == 1


def test_explicit_transport_is_kept_and_only_auto_falls_back() -> None:
    assert transport_choice.choose("https", "vsan").transport == "https"
    refused = DatastoreIOError("/folder/x", "HTTP 403")
    assert transport_choice.fallback("https", refused) is None
    fb = transport_choice.fallback("auto", refused)
    assert fb is not None and fb.transport == "nfc" and "refused" in fb.reason
    fb = transport_choice.fallback("auto", ObjectBackedDisk("[ds] x.vmdk", "vvol"))
    assert fb is not None and fb.transport == "nfc" and "vvol" in fb.reason


def test_hotadd_wins_when_the_mover_can() -> None:
    choice = transport_choice.choose("auto", "vsan", hotadd="mover VM sees vsanDatastore")
    assert choice == transport_choice.Choice("hotadd", "mover VM sees vsanDatastore")


def test_auto_reads_a_virtual_rdm_through_the_host_unless_hot_added() -> None:
    for ds_type in ("VMFS", "NFS", None):
        choice = transport_choice.choose("auto", ds_type, virtual_rdm=True)
        assert choice == transport_choice.Choice("nfc", transport_choice.VIRTUAL_RDM)
    hot = transport_choice.choose("auto", "VMFS", hotadd="mover sees it", virtual_rdm=True)
    assert hot.transport == "hotadd"
    assert transport_choice.choose("https", "VMFS", virtual_rdm=True).transport == "https"
