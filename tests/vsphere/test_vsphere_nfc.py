"""The nfc transport's pieces on the lab: a disk streamed through an export lease into a
repository equals the snapshot's disk, with decoded-but-unread grains bounded by the chunker's
window; a plan limits what is inflated, a read outside it or a second read raises; the lease is
completed only when every opened stream reached its end, aborted otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.disk_backup import backup_disk
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import cbt, inventory, snapshots
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import NfcError
from vmkeep.vsphere.nfc import NfcExport
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab
VM = "vvol01"
CHUNK = 256 * 1024


@pytest.fixture
def snap(lab: Any) -> Any:
    s = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    vm = next(v for v in inventory.list_vms(s) if v.name == VM)
    handle = snapshots.create_snapshot(s, vm.ref, "nfc-unit", quiesce=False)
    try:
        yield s, vm, handle
    finally:
        snapshots.remove_snapshot(s, vm.ref, handle.ref, handle.name)
        s.close()


def _disk(s: Any, handle: Any) -> Any:
    return next(iter(cbt.snapshot_disks(s, handle.ref).values()))


def test_stream_into_repository_equals_the_snapshot_disk(
    lab: Any, snap: Any, tmp_path: Path
) -> None:
    s, _vm, handle = snap
    disk = _disk(s, handle)
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=CHUNK)
    export = NfcExport.open(s, handle.ref, VM)
    src = export.source(disk)
    src.plan_reads(None, CHUNK)
    workers = 3
    try:
        result = backup_disk(repo, src, disk.capacity, workers=workers)
        src.finish()
    finally:
        src.close()
    assert export._closed and not export._failed  # completed by the last close
    lease = [le for le in lab.client.nfc_leases() if le["vm"] == VM][-1]
    assert lease["outcome"] == "done" and lease["progress_calls"] >= 2
    table = result.chunks
    data = b"".join(
        bytes(table.lengths[i]) if table.blob_id(i) == ZERO_ID else repo.read_blob(table.blob_id(i))
        for i in range(len(table))
    )
    assert data == lab.read_disk(VM, 0, snapshot=handle.name)
    # memory: decoded grains wait only for reads in flight (2 × workers chunks, plus a grain)
    assert 0 < src.peak_pending <= (2 * workers + 1) * CHUNK + 64 * 1024, src.peak_pending


def test_plan_limits_reads_and_an_unfinished_stream_aborts_the_lease(
    lab: Any, snap: Any
) -> None:
    s, _vm, handle = snap
    disk = _disk(s, handle)
    export = NfcExport.open(s, handle.ref, VM)
    src = export.source(disk)
    src.plan_reads([(CHUNK + 10, 100)], CHUNK)  # one chunk: [CHUNK, 2 × CHUNK)
    try:
        with pytest.raises(NfcError, match="outside the planned areas"):
            src.pread(0, CHUNK)
        assert src.pread(CHUNK, CHUNK) == lab.read_disk(VM, 0, handle.name, CHUNK, CHUNK)
        with pytest.raises(NfcError, match="cannot rewind"):
            src.pread(CHUNK, CHUNK)
        assert src.finished  # after the last planned grain the rest is skipped to the end
    finally:
        src.close()
    assert _last_lease(lab)["outcome"] == "done"

    export = NfcExport.open(s, handle.ref, VM)
    src = export.source(disk)
    try:
        assert src.pread(0, CHUNK) == lab.read_disk(VM, 0, handle.name, 0, CHUNK)
        assert not src.finished
    finally:
        src.close()  # not read to its end: the lease is aborted
    lease = _last_lease(lab)
    assert lease["outcome"] == "aborted" and lease["state"] == "error", lease


def _last_lease(lab: Any) -> dict[str, Any]:
    return [le for le in lab.client.nfc_leases() if le["vm"] == VM][-1]


def test_unknown_device_keys_pair_disks_in_device_order(lab: Any) -> None:
    s = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    vm = next(v for v in inventory.list_vms(s) if v.name == "db01")  # + an independent disk
    handle = snapshots.create_snapshot(s, vm.ref, "nfc-keys", quiesce=False)
    try:
        disks = cbt.snapshot_disks(s, handle.ref)
        [disk] = [d for d in disks.values() if not d.independent]
        with lab.fault("nfc_keys", "db01", count=0):
            export = NfcExport.open(s, handle.ref, "db01")
        assert list(export.urls) == [disk.key]
        src = export.source(disk)
        try:
            assert src.pread(0, CHUNK) == lab.read_disk("db01", 0, handle.name, 0, CHUNK)
        finally:
            src.close()
    finally:
        snapshots.remove_snapshot(s, vm.ref, handle.ref, handle.name)
        s.close()
