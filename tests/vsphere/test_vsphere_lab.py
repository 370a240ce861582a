"""The vSphere library against the ESX lab (``esx_lab``): TLS, login, inventory, snapshots,
sweeps, CBT, transports, session expiry, guest operations, VM re-creation, credential hygiene.

Every test leaves the lab as it found it: faults cleared, its own snapshots removed, created VMs
destroyed.  VMs used: small02 (user snapshot chain), small03, small04 (disks 8 MiB), linux01 (two
disks), db01 (independent).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import ssl
import traceback
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from vmkeep.vsphere import cbt, guestops, hosts, inventory, snapshots, transports, vmconfig
from vmkeep.vsphere.connection import Session, connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import (
    AuthenticationFailed,
    GuestOperationFailed,
    GuestProgramFailed,
    QuiesceFailed,
    SnapshotFailed,
    TaskFailed,
    TLSVerificationFailed,
    VMExists,
)
from vmkeep.vsphere.tls import TLSOptions
from vmkeep.vsphere.waiter import wait_for_task

pytestmark = pytest.mark.lab
CANARY = "CANARY-vc-Pw-4f1e9"


def sha256_thumbprint(cafile: str) -> str:
    with open(cafile) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


@pytest.fixture
def faults(lab: Any) -> Iterator[Any]:
    client = lab.client
    yield client
    client.clear_faults()


@pytest.fixture
def session(lab: Any) -> Iterator[Session]:
    s = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    yield s
    s.close()


def vm_named(session: Session, name: str) -> inventory.VMInfo:
    return next(v for v in inventory.list_vms(session) if v.name == name)


def our_snapshots(session: Session, vm: Any) -> list[str]:
    return [n.name for n in snapshots.snapshots_of(session, vm)]


# -- connection -------------------------------------------------------------------------------
def test_connect_with_ca_thumbprint_and_insecure(lab: Any) -> None:
    creds = Credentials(lab.user, lab.password)
    for opts in (
        TLSOptions(cafile=lab.cafile),
        TLSOptions(thumbprint=sha256_thumbprint(lab.cafile)),
        TLSOptions(insecure=True),
    ):
        s = connect(lab.url, creds, opts)
        assert s.content.about.apiType in ("VirtualCenter", "HostAgent")
        s.close()


def test_untrusted_certificate_fails_on_localhost(lab: Any) -> None:
    creds = Credentials(lab.user, lab.password)
    with pytest.raises(TLSVerificationFailed):
        connect(lab.url, creds, TLSOptions(thumbprint="00" * 32))
    with pytest.raises(TLSVerificationFailed):
        connect(lab.url, creds)  # system trust store: the lab's own CA is not in it


def test_wrong_password_never_leaks(lab: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    text = ""
    with pytest.raises(AuthenticationFailed) as info:
        try:
            connect(lab.url, Credentials(lab.user, CANARY), TLSOptions(cafile=lab.cafile))
        except AuthenticationFailed:
            text = traceback.format_exc()
            raise
    assert CANARY not in str(info.value) and CANARY not in repr(info.value)
    assert CANARY not in text and CANARY not in caplog.text
    assert info.value.exit_code == 16


def test_relogin_after_session_expiry(lab: Any, session: Session, faults: Any) -> None:
    vm = vm_named(session, "small04")
    before = session.generation
    faults.expire_sessions()
    assert inventory.find_vm(session, vm.instance_uuid).name == "small04"
    assert session.generation == before + 1
    faults.expire_sessions()
    disk = vm.disks[0]
    # small04 runs: its current disk is readable only from its host (a service ticket, which
    # logs in again too)
    host = hosts.host_endpoint(session, vm.host)
    reader = transports.open_disk(session, disk, "https", datacenter=vm.datacenter, host=host)
    assert len(reader.read(4096)) == 4096
    assert session.generation == before + 2


# -- inventory --------------------------------------------------------------------------------
def test_inventory_matches_the_lab(lab: Any, session: Session) -> None:
    vms = {v.name: v for v in inventory.list_vms(session)}
    assert {v["name"] for v in lab.vms} <= set(vms)
    # the smallNN VMs are moved, resized and rewritten by other tests of the shared session lab;
    # compare the others with the lab's inventory as it was started
    for want in (v for v in lab.vms if not v["name"].startswith("small")):
        got = vms[want["name"]]
        assert got.host == want["host"] and got.template == want["template"]
        assert [(d.key, d.capacity, d.file_name) for d in got.disks] == [
            (d["key"], d["capacity"], d["datastore_path"]) for d in want["disks"]
        ]
        assert [d.independent for d in got.disks] == [d["independent"] for d in want["disks"]]
    one = vms["small03"]
    assert inventory.find_vm(session, one.instance_uuid).moid == one.moid
    chosen = inventory.select_vms(vms.values(), patterns=["small0*"], host=one.host)
    assert one in chosen and all(v.host == one.host for v in chosen)


# -- snapshots --------------------------------------------------------------------------------
def test_snapshot_removed_when_body_raises(session: Session) -> None:
    vm = vm_named(session, "small03")
    with pytest.raises(RuntimeError), snapshots.backup_snapshot(session, vm.ref, "lab-raise") as h:
        assert h.name in our_snapshots(session, vm.ref)
        raise RuntimeError("backup failed half-way")
    assert our_snapshots(session, vm.ref) == []


def test_remove_failing_once_is_retried(session: Session, faults: Any) -> None:
    vm = vm_named(session, "small03")
    faults.add_fault("remove_snapshot", target="small03", count=1)
    with snapshots.backup_snapshot(session, vm.ref, "lab-rmretry", quiesce=False):
        pass
    assert our_snapshots(session, vm.ref) == []


def test_a_long_removal_is_waited_for_not_issued_again(session: Session, faults: Any) -> None:
    """Consolidating a large delta takes hours on a real host: vmkeep waits for the removal it
    started (logging as it goes) instead of timing out and issuing another, which vSphere
    refuses with TaskInProgress while the first runs."""
    vm = vm_named(session, "small03")
    handle = snapshots.create_snapshot(session, vm.ref, "lab-slowrm", quiesce=False)
    faults.add_fault("remove_slow", target="small03", count=1, delay=1.5)
    snapshots.remove_snapshot(session, vm.ref, handle.ref, handle.name, delay=0.1, report_every=0.3)
    assert our_snapshots(session, vm.ref) == []


def test_quiesce_and_create_failures_are_typed(session: Session, faults: Any) -> None:
    vm = vm_named(session, "small03")
    faults.add_fault("quiesce_fail", target="small03", count=1)
    with pytest.raises(QuiesceFailed), snapshots.backup_snapshot(session, vm.ref, "lab-q"):
        pass
    with snapshots.backup_snapshot(session, vm.ref, "lab-q", quiesce=False) as h:
        assert not h.quiesced  # crash-consistent fallback, the caller records it
    faults.add_fault("snapshot_create", target="small03", count=1)
    with pytest.raises(SnapshotFailed) as info:
        snapshots.create_snapshot(session, vm.ref, "lab-c", quiesce=False)
    assert not isinstance(info.value, QuiesceFailed)
    assert our_snapshots(session, vm.ref) == []


def test_sweep_removes_only_vmkeep_leftovers(session: Session) -> None:
    vm = vm_named(session, "small04")
    foreign = []
    try:
        snapshots.create_snapshot(session, vm.ref, "lab-leaked", quiesce=False)
        snapshots.create_snapshot(session, vm.ref, "lab-running", quiesce=False)
        for name, desc in [("before-upgrade", "admin's"), ("vmkeep-imposter", "no marker")]:
            task = vm.ref.CreateSnapshot_Task(name, desc, False, False)
            foreign.append(wait_for_task(session, task))
        report = snapshots.sweep_snapshots(session, timedelta(0), {"lab-running"})
        assert [s.name for s in report.removed] == ["vmkeep-lab-leaked"]
        assert not report.failed
        left = our_snapshots(session, vm.ref)
        assert sorted(left) == ["before-upgrade", "vmkeep-imposter", "vmkeep-lab-running"]
        young = snapshots.sweep_snapshots(session, timedelta(hours=1), ())
        assert young.removed == []
    finally:
        for node in snapshots.snapshots_of(session, vm.ref):
            snapshots.remove_snapshot(session, vm.ref, node.snapshot, node.name)
    assert our_snapshots(session, vm.ref) == []


# -- CBT and transports -----------------------------------------------------------------------
def test_cbt_incremental_covers_every_write(lab: Any, session: Session, faults: Any) -> None:
    vm = vm_named(session, "small04")
    cbt.enable_cbt(session, vm.ref)
    assert cbt.enable_cbt(session, vm.ref) is False  # idempotent
    with snapshots.backup_snapshot(session, vm.ref, "lab-cbt1", quiesce=False) as h:
        disk = cbt.snapshot_disks(session, h.ref)[2000]
        first = cbt.plan_disk(session, vm.ref, h.ref, disk, None, vm_cbt_enabled=True)
        assert first.mode == "full" and first.extents is not None  # allocated areas of a thin disk
        before = transports.open_disk(session, disk, "https", datacenter=vm.datacenter).read()
        prev = cbt.DiskState.of(disk, True)
    written = faults.write("small04", 3, seed=11)
    faults.set_qcda_page(2)  # force paging by startOffset
    try:
        with snapshots.backup_snapshot(session, vm.ref, "lab-cbt2", quiesce=False) as h:
            disk2 = cbt.snapshot_disks(session, h.ref)[2000]
            plan = cbt.plan_disk(session, vm.ref, h.ref, disk2, prev, vm_cbt_enabled=True)
            assert plan.mode == "cbt", plan.reason
            after = transports.open_disk(session, disk2, "https", datacenter=vm.datacenter).read()
    finally:
        faults.set_qcda_page(0)
    assert plan.extents is not None

    def covered(off: int) -> bool:
        return any(o <= off < o + n for o, n in plan.extents or ())

    changed = [i for i in range(0, len(after), 512) if after[i : i + 512] != before[i : i + 512]]
    assert changed and all(covered(i) for i in changed)
    assert all(covered(off) for off, _ in written)


def test_cbt_reset_forces_scan(session: Session) -> None:
    from pyVmomi import vim

    vm = vm_named(session, "small04")
    cbt.enable_cbt(session, vm.ref)
    with snapshots.backup_snapshot(session, vm.ref, "lab-reset1", quiesce=False) as h:
        prev = cbt.DiskState.of(cbt.snapshot_disks(session, h.ref)[2000], True)
    off = vim.vm.ConfigSpec(changeTrackingEnabled=False)
    wait_for_task(session, vm.ref.ReconfigVM_Task(off))
    cbt.enable_cbt(session, vm.ref)
    with snapshots.backup_snapshot(session, vm.ref, "lab-reset2", quiesce=False) as h:
        disk = cbt.snapshot_disks(session, h.ref)[2000]
        plan = cbt.plan_disk(session, vm.ref, h.ref, disk, prev, vm_cbt_enabled=True)
        assert plan.mode == "scan" and plan.reason
        # asking anyway with the stale change id must fail loudly, never return "no changes"
        with pytest.raises(cbt.ChangeTrackingError):
            cbt.query_changed_areas(
                session, vm.ref, h.ref, 2000, str(prev.change_id), disk.capacity
            )


def test_https_equals_direct_equals_lab(lab: Any, session: Session, faults: Any) -> None:
    vm = vm_named(session, "linux01")
    mounts = {d["name"]: d["local_path"] for d in lab.datastores}
    with snapshots.backup_snapshot(session, vm.ref, "lab-read", quiesce=False) as h:
        for key, disk in cbt.snapshot_disks(session, h.ref).items():
            https = transports.open_disk(session, disk, "https", datacenter=vm.datacenter)
            direct = transports.open_disk(session, disk, "direct", datastore_mounts=mounts)
            assert https.size == direct.size == disk.capacity
            step = 4 << 20
            for off, data in https.read_extents([(0, https.size)], block=step):
                assert data == direct.pread(off, len(data)), (key, off)
            index = [d.key for d in vm.disks].index(key)
            sample = faults.read_disk("linux01", index, snapshot=h.name, offset=1 << 20,
                                      length=65536)
            assert direct.pread(1 << 20, 65536) == sample


def test_short_and_dropped_reads_are_retried(lab: Any, session: Session, faults: Any) -> None:
    vm = vm_named(session, "small03")
    mounts = {d["name"]: d["local_path"] for d in lab.datastores}
    with snapshots.backup_snapshot(session, vm.ref, "lab-flaky", quiesce=False) as h:
        disk = cbt.snapshot_disks(session, h.ref)[2000]
        want = transports.open_disk(session, disk, "direct", datastore_mounts=mounts).read()
        reader = transports.open_disk(session, disk, "https", datacenter=vm.datacenter)
        for kind in ("ds_short", "ds_drop"):
            faults.add_fault(kind, count=1, nbytes=100000)
            reader.seek(0)
            assert reader.read() == want
            assert all(f["hits"] >= 1 for f in faults.faults() if f["kind"] == kind)


# -- guest operations -------------------------------------------------------------------------
def test_guest_programs_and_files(session: Session, faults: Any) -> None:
    vm = vm_named(session, "linux01")
    guest = Credentials("root", CANARY)
    ok = guestops.run_program(session, vm.ref, guest, "/usr/local/bin/pre-freeze", "--db app")
    assert ok.exit_code == 0
    faults.add_fault("guest_program", target="post-thaw", count=1, exit_code=3)
    with pytest.raises(GuestProgramFailed) as info:
        guestops.run_program(session, vm.ref, guest, "/usr/local/bin/post-thaw")
    assert info.value.args[2] == 3
    data = os.urandom(200_000)
    guestops.make_directory(session, vm.ref, guest, "/home/alice/restored")
    guestops.upload_file(session, vm.ref, guest, "/home/alice/restored/blob.bin",
                         io.BytesIO(data), len(data), overwrite=True)
    out = io.BytesIO()
    assert guestops.download_file(session, vm.ref, guest, "/home/alice/restored/blob.bin", out)
    assert out.getvalue() == data
    faults.add_fault("guest_auth", target="linux01", count=1)
    with pytest.raises(GuestOperationFailed) as denied:
        guestops.run_program(session, vm.ref, guest, "/bin/true")
    assert CANARY not in str(denied.value) and CANARY not in traceback.format_exc()
    # told by the fault's type (InvalidGuestLogin), not its message
    assert "guest login refused" in denied.value.get_message()
    assert denied.value.fault_type == "InvalidGuestLogin"


# -- VM configuration -------------------------------------------------------------------------
def test_capture_and_recreate_vm(lab: Any, session: Session) -> None:
    vm = vm_named(session, "small03")
    config = vmconfig.capture_config(session, vm.ref)
    assert config["name"] == "small03" and len(config["disks"]) == 1
    name = "small03-restored"
    where = vmconfig.placement(session, config, vm.host or "", None, vmconfig.NewVmOptions())
    created = vmconfig.create_vm(session, config, name, where, vm.datastores[0])
    try:
        assert [d["capacity"] for d in created.disks] == [vm.disks[0].capacity]
        with pytest.raises(VMExists, match="or --overwrite to replace it"):
            vmconfig.create_vm(session, config, name, where, vm.datastores[0])
        data = os.urandom(vm.disks[0].capacity)
        vmconfig.upload_disk(session, created.disks[0]["file_name"], io.BytesIO(data), len(data),
                             datacenter=vm.datacenter or "")
        new = inventory.describe_vm(session, created.ref)
        reader = transports.open_disk(session, new.disks[0], "https", datacenter=vm.datacenter)
        assert reader.read() == data
    finally:
        wait_for_task(session, created.ref.Destroy_Task())


def test_copied_and_moved_disks_name_their_own_extents(lab: Any, session: Session) -> None:
    """As on ESX, CopyVirtualDisk and MoveVirtualDisk rewrite the descriptor's extent line (the
    stock simulator kept the source's name: a moved disk's descriptor named a missing file) and
    refuse a disk a running VM holds (stock vcsim copied and moved it)."""
    import re

    from vmkeep.vsphere.datastore_paths import split_datastore_path
    from vmkeep.vsphere.inventory import datacenter_of

    vm = vm_named(session, "small03")
    source = vm.disks[0].file_name
    ds, rel = split_datastore_path(source)
    root = lab.datastore_dir(ds)
    vdm, dc = session.content.virtualDiskManager, datacenter_of(session, vm.ref)
    copied, moved = f"[{ds}] vdmtest/copied.vmdk", f"[{ds}] vdmtest/moved.vmdk"

    def extent(path: str) -> str:
        text = (root / split_datastore_path(path)[1]).read_text()
        [name] = re.findall(r'^RW \d+ VMFS "([^"]+)"$', text, re.M)
        return name

    def refused(task: Any, what: str) -> str:
        with pytest.raises(TaskFailed) as caught:
            wait_for_task(session, task, what=what)
        return str(caught.value)

    session.call(session.content.fileManager.MakeDirectory, f"[{ds}] vdmtest", dc, True)
    snap = None
    try:
        # as on ESX, the running VM locks its disk: no copy of its writable top, no move at all
        assert "FileLocked" in refused(
            session.call(vdm.CopyVirtualDisk_Task, source, dc, copied, dc), "copy")
        assert "FileLocked" in refused(
            session.call(vdm.MoveVirtualDisk_Task, source, dc, moved, dc, False), "move")
        # under a snapshot the base is frozen (read-locked): it copies, it still does not move
        snap = wait_for_task(session, vm.ref.CreateSnapshot_Task("vdm", "", False, False))
        assert "FileLocked" in refused(
            session.call(vdm.MoveVirtualDisk_Task, source, dc, moved, dc, False), "move")
        wait_for_task(session, session.call(vdm.CopyVirtualDisk_Task, source, dc, copied, dc),
                      what="copy")
        assert extent(copied) == "copied-flat.vmdk"
        assert extent(source) == rel.rsplit("/", 1)[-1].replace(".vmdk", "-flat.vmdk")
        assert (root / "vdmtest/copied-flat.vmdk").read_bytes() == (
            root / rel.replace(".vmdk", "-flat.vmdk")).read_bytes()
        wait_for_task(session, session.call(vdm.MoveVirtualDisk_Task, copied, dc, moved, dc,
                                            False), what="move")
        assert extent(moved) == "moved-flat.vmdk"
        assert not (root / "vdmtest/copied-flat.vmdk").exists()
        assert (root / "vdmtest/moved-flat.vmdk").exists()
    finally:
        if snap is not None:
            wait_for_task(session, snap.RemoveSnapshot_Task(False))
        wait_for_task(session, session.call(session.content.fileManager.DeleteDatastoreFile_Task,
                                            f"[{ds}] vdmtest", dc), what="clean up")


def test_vm_keeps_identity_across_vmotion(lab: Any, session: Session) -> None:
    from pyVmomi import vim

    vm = vm_named(session, "small03")
    content = session.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    hosts = {h.name: h for h in view.view}
    view.DestroyView()
    target = next(name for name in hosts if name != vm.host)
    wait_for_task(session, vm.ref.RelocateVM_Task(vim.vm.RelocateSpec(host=hosts[target])))
    try:
        session.content.sessionManager.Logout()  # and the session expired meanwhile
        moved = inventory.find_vm(session, vm.instance_uuid)
        assert moved.host == target and moved.name == "small03"
        with snapshots.backup_snapshot(session, moved.ref, "lab-moved", quiesce=False):
            pass
    finally:
        spec = vim.vm.RelocateSpec(host=hosts[vm.host or ""])
        wait_for_task(session, vm.ref.RelocateVM_Task(spec))


def test_disk_behind_a_user_snapshot_reads_the_composed_chain(
    lab: Any, session: Session, faults: Any
) -> None:
    """With an administrator's snapshot present, our snapshot's disk is the admin's frozen
    delta: both transports read the composed chain, equal to the disk at our snapshot."""
    vm = vm_named(session, "small02")
    mounts = {d["name"]: d["local_path"] for d in lab.datastores}
    user = wait_for_task(session, vm.ref.CreateSnapshot_Task("admin-snap", "", False, False))
    try:
        written = faults.write("small02", 5, seed=41)
        assert written
        want = faults.read_disk("small02", 0)
        with snapshots.backup_snapshot(session, vm.ref, "lab-chain", quiesce=False) as h:
            faults.write("small02", 2, seed=42)  # after our snapshot: must not show
            disk = cbt.snapshot_disks(session, h.ref)[2000]
            assert disk.file_name.endswith("-000001.vmdk")
            https = transports.open_disk(session, disk, "https", datacenter=vm.datacenter)
            direct = transports.open_disk(session, disk, "direct", datastore_mounts=mounts)
            assert https.chain is not None and https.chain.depth == 1
            assert https.size == direct.size == disk.capacity == len(want)
            got = b"".join(d for _, d in https.read_extents([(0, https.size)], block=1 << 20))
            assert got == want
            assert direct.read() == want
            changed = https.chain.allocated(1)  # what the admin's delta holds
            assert all(any(o <= off < o + n for o, n in changed) for off, _ in written)
            https.close()
            direct.close()
    finally:
        snapshots.remove_snapshot(session, vm.ref, user, "admin-snap")
    assert our_snapshots(session, vm.ref) == []
