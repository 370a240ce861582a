"""The delta chains the lab makes, read three ways that must agree byte for byte: ``qemu-img
convert -f vmdk`` (an independent reader), the lab's own view (``vmkeep lab export-disk``) and
vmkeep's reader (:func:`vmkeep.vsphere.transports.open_disk`, direct and https).

* ``legacy01`` lives on VMFS5 (``datastore2``): COWD/vmfsSparse deltas with 512-byte grains;
* ``app01`` lives on VMFS6 (``datastore3``), two disks: SEsparse deltas, with guest trims that
  leave "unmapped" grains over data the parent holds (they must read as zeros).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots, snapshot, vdisks
from vmkeep.disks.vmdk.descriptor import parse_descriptor
from vmkeep.vsphere import transports
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.inventory import VirtualDisk
from vmkeep.vsphere.tls import TLSOptions

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) missing"),
]

CASES = [("legacy01", 0, "vmfsSparse"), ("app01", 0, "seSparse"), ("app01", 1, "seSparse")]


@pytest.fixture(scope="module")
def pyvmomi_si(esx_lab: Any) -> Any:
    return esx_lab.connect()


def local(lab: Any, ds_path: str) -> Path:
    ds, rel = ds_path[1:].split("] ", 1)
    return lab.datastore_dir(ds) / rel


def qemu_raw(lab: Any, ds_path: str, out: Path) -> bytes:
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(local(lab, ds_path)), str(out)],
        check=True, capture_output=True,
    )
    return out.read_bytes()


def vmkeep_read(lab: Any, backing: Any, capacity: int, transport: str) -> bytes:
    ds, _ = backing.fileName[1:].split("] ", 1)
    info = VirtualDisk(key=2000, label="disk", capacity=capacity, file_name=backing.fileName,
                    datastore=ds, thin=True, disk_mode="persistent", change_id=None,
                    controller_key=1000, unit_number=0)
    if transport == "direct":
        mounts = {d["name"]: d["local_path"] for d in lab.datastores}
        reader = transports.open_disk(None, info, "direct", datastore_mounts=mounts)
        return reader.read()
    session = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    try:
        return transports.open_disk(session, info, "https", datacenter=lab.datacenter).read()
    finally:
        session.close()


def sesparse_grain_types(path: Path) -> dict[int, int]:
    """Count of each grain type in an SESparse file (parsed here, independently)."""
    data = path.read_bytes()
    h = struct.unpack_from("<26Q", data)
    assert h[0] == 0xCAFEBABE and h[1] == 0x200000001 and h[3] == 8 and h[4] == 64
    gd_off, gd_secs, gt_off = h[16], h[17], h[18]
    counts: dict[int, int] = {}
    for entry in struct.unpack_from(f"<{gd_secs * 64}Q", data, gd_off * 512):
        if not entry:
            continue
        assert entry >> 32 == 0x10000000
        table = (gt_off + (entry & 0xFFFFFFFF) * 64) * 512
        for e in struct.unpack_from("<4096Q", data, table):
            if e:
                counts[e >> 60] = counts.get(e >> 60, 0) + 1
    return counts


@pytest.mark.parametrize("vm_name, disk, fmt", CASES)
def test_qemu_lab_and_vmkeep_agree_on_every_delta_chain(
    lab: Any, pyvmomi_si: Any, tmp_path: Path, vm_name: str, disk: int, fmt: str
) -> None:
    vm = find_vm(pyvmomi_si, vm_name)
    remove_all_snapshots(vm)
    try:
        snapshot(vm, "o1")
        lab.write(vm_name, 2, disk=disk, seed=32, trim=True)
        written = lab.write(vm_name, 6, disk=disk, seed=31 + disk)
        snapshot(vm, "o2")
        lab.write(vm_name, 4, disk=disk, seed=33)
        # trim areas the parent holds data in (written above, 4 KiB aligned) and an unaligned one
        trims = [written[0], written[-1]]
        for at in trims:
            lab.write(vm_name, disk=disk, at=at, trim=True)
        lab.write(vm_name, disk=disk, at=(3 * 4096 + 700, 3 * 4096), trim=True)
        snapshot(vm, "o3")  # freeze everything we compare (reads of frozen files only)

        snap = {s.name: s for s in _walk(vm.snapshot.rootSnapshotList)}
        capacity = lab.vm(vm_name)["disks"][disk]["capacity"]
        for point in ("o2", "o3"):
            backing = vdisks(snap[point].snapshot.config)[disk].backing
            assert backing.parent is not None  # a delta
            text = local(lab, backing.fileName).read_text()
            assert f'createType="{fmt}"' in text
            [ext] = parse_descriptor(text.encode()).extents
            extent = local(lab, backing.fileName).with_name(str(ext.file))
            if fmt == "seSparse":
                assert backing.deltaDiskFormat == "seSparseFormat"
                assert extent.name.endswith("-sesparse.vmdk")
                if point == "o3":
                    assert sesparse_grain_types(extent).get(1, 0) > 0  # unmapped grains
            else:
                assert backing.deltaDiskFormat == "redoLogFormat"
                assert extent.name.endswith("-delta.vmdk")
                assert struct.unpack_from("<4sIIII", extent.read_bytes())[4] == 1  # 512 B grains

            theirs = qemu_raw(lab, backing.fileName, tmp_path / f"{point}.qemu.raw")
            lab.export_disk(vm_name, disk, tmp_path / f"{point}.lab.raw", snapshot=point)
            ours = (tmp_path / f"{point}.lab.raw").read_bytes()
            assert len(theirs) == len(ours) == capacity
            assert theirs == ours, f"qemu-img and the lab disagree on {backing.fileName}"
            for transport in ("direct", "https"):
                got = vmkeep_read(lab, backing, capacity, transport)
                assert got == ours, f"vmkeep ({transport}) disagrees on {backing.fileName}"

        now = (tmp_path / "o3.lab.raw").read_bytes()
        before = (tmp_path / "o2.lab.raw").read_bytes()
        for off, n in trims:  # trimmed: zeros now, although the parent holds data there
            assert now[off : off + n] == bytes(n)
            assert before[off : off + n] != bytes(n)
    finally:
        remove_all_snapshots(vm)
    lab.export_disk(vm_name, disk, tmp_path / "consolidated.raw")
    assert (tmp_path / "consolidated.raw").read_bytes() == now


def _walk(tree: Any) -> Any:
    for node in tree or ():
        yield node
        yield from _walk(node.childSnapshotList)
