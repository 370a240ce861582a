"""NFC import leases against the lab: progress kept alive, a bad stream refused, an aborted
lease takes its VM with it, and a restore failing mid-upload leaves no VM behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmkeep.licensing.store as store
from tests.restore.test_restore_lab import SOURCE_VM, destroy_vm
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.tasks.vcenter import open_session
from vmkeep.vsphere import disk_attach, vm_lookup, vmconfig
from vmkeep.vsphere.errors import DatastoreIOError
from vmkeep.vsphere.nfc_import import import_vm
from vmkeep.vsphere.target import VCenterTarget

pytestmark = pytest.mark.lab
DEV_KEYS = Path(__file__).resolve().parent.parent / "licensing" / "keys"


@pytest.fixture(scope="module")
def lab_env(esx_lab: Any) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMKEEP_VC_USER", esx_lab.user)
        mp.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
        mp.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
        mp.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
        yield {"vcenter": esx_lab.url, "cafile": esx_lab.cafile}


def _names(esx_lab: Any) -> set[str]:
    return {v["name"] for v in esx_lab.client.status()["vms"]}


def test_lease_progress_bad_stream_and_abort(esx_lab, lab_env):
    session = open_session(VCenterTarget(lab_env["vcenter"], cafile=lab_env["cafile"]))
    try:
        where = vmconfig.place(session, esx_lab.hosts[0]["name"], None)
        spec = disk_attach.helper_spec(
            "nfc-lease-probe", "datastore2", 1 << 20, vmconfig.Provisioning(thin=True), {})
        lease = import_vm(session, where.pool, where.folder, where.host, spec, keepalive=0.05)
        assert "nfc-lease-probe" in _names(esx_lab)
        lease.percent = 42
        deadline = time.monotonic() + 60
        while session.get(lease.lease, "transferProgress") != 42:
            assert time.monotonic() < deadline, "lease progress never reported"
            time.sleep(0.05)
        [url] = lease.disk_urls()
        with pytest.raises(DatastoreIOError, match="not a streamOptimized VMDK"):
            lease.upload(url, [b"garbage" * 100], what="bad stream")
        lease.abort("test")
        assert "nfc-lease-probe" not in _names(esx_lab)  # the aborted import took its VM along
    finally:
        session.close()


def test_a_restore_failing_mid_upload_aborts_and_leaves_no_vm(esx_lab, lab_env, tmp_path):
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    point = run_flow(backup_vm, False, repo=str(repo), vm=SOURCE_VM, quiesce=False, **lab_env)
    before = _names(esx_lab)
    seen = []

    def fail_half_way(n: int) -> None:
        seen.append(n)
        if len(seen) == 10:
            raise RuntimeError("data mover lost")

    with pytest.raises(RuntimeError, match="data mover lost"):
        run_flow(restore_vm, False, repo=str(repo), point=point["id"], name="nfc-interrupted",
                 datastore="datastore2", progress=fail_half_way, **lab_env)
    assert _names(esx_lab) == before


def _marked_vm(esx_lab: Any, name: str, mark: str | None) -> None:
    from pyVim.connect import Disconnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    si = esx_lab.connect()
    try:
        view = si.content.viewManager.CreateContainerView(
            si.content.rootFolder, [vim.HostSystem], True
        )
        host = view.view[0]
        view.DestroyView()
        dc = host.parent
        while not isinstance(dc, vim.Datacenter):
            dc = dc.parent
        extra = [] if mark is None else [
            vim.option.OptionValue(key="vmkeep.restore.incomplete", value=mark)
        ]
        spec = vim.vm.ConfigSpec(name=name, guestId="otherGuest64", numCPUs=1, memoryMB=4,
                                 files=vim.vm.FileInfo(vmPathName="[datastore2]"),
                                 extraConfig=extra)
        WaitForTask(dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host))
    finally:
        Disconnect(si)


def test_the_sweep_removes_only_dead_runs_half_restored_vms(esx_lab, lab_env):
    import os
    import socket

    from tests.restore.restore_helpers import run_cli
    from tests.restore.test_restore_lab import destroy_vm

    here = socket.gethostname()
    vms = {
        "sw-dead": f"run-a;2026-01-01T00:00:00+00:00;{here};999999999",  # process gone
        "sw-elsewhere": "run-b;2026-01-01T00:00:00+00:00;other-mover;1",  # another data mover
        "sw-alive": f"run-c;2026-01-01T00:00:00+00:00;{here};{os.getpid()}",  # still restoring
        "sw-malformed": "not a vmkeep mark",
        "sw-unmarked": None,
    }
    try:
        for name, mark in vms.items():
            _marked_vm(esx_lab, name, mark)
        code, out, err = run_cli("sweep", "--older-than", "0", "--vcenter", lab_env["vcenter"],
                                 "--cafile", lab_env["cafile"], "--json")
        assert code == 0, err
        removed = json.loads(out)["removed"]
        assert sorted(r for r in removed if r.startswith("sw-")) == [
            "sw-dead: half-restored VM", "sw-elsewhere: half-restored VM",
        ]
        left = _names(esx_lab)
        assert {"sw-alive", "sw-malformed", "sw-unmarked"} <= left
        assert not {"sw-dead", "sw-elsewhere"} & left
    finally:
        for name in vms:
            destroy_vm(esx_lab, name)


def test_a_running_restore_keeps_its_mark_fresh(esx_lab, lab_env):
    from tests.restore.test_restore_lab import destroy_vm
    from vmkeep.vsphere.restore_marker import MARK_KEY, MarkKeeper, parse_mark

    old = "run-k;2026-01-01T00:00:00+00:00;elsewhere;1"
    _marked_vm(esx_lab, "mk-probe", old)
    session = open_session(VCenterTarget(lab_env["vcenter"], cafile=lab_env["cafile"]))
    try:
        vm = vm_lookup.resolve_vm(session, "mk-probe").ref

        def mark() -> str:
            extra = session.get(vm, "config.extraConfig") or []
            return next(o.value for o in extra if o.key == MARK_KEY)

        keeper = MarkKeeper(session, vm, "run-k", interval=0.05)
        deadline = time.monotonic() + 60
        while mark() == old:
            assert time.monotonic() < deadline, "the mark was never refreshed"
            time.sleep(0.05)
        keeper.stop()
        fresh = parse_mark(mark())
        assert fresh is not None and fresh.run_id == "run-k" and fresh.created.year >= 2026
        assert fresh.created > parse_mark(old).created  # type: ignore[union-attr]
    finally:
        session.close()
        destroy_vm(esx_lab, "mk-probe")


def test_a_restore_that_cannot_fit_is_refused_before_anything_is_created(
    esx_lab: Any, lab_env: dict[str, Any], tmp_path: Path
) -> None:
    """The datastore reports less free space than the VM takes: ``NotEnoughSpace`` names both,
    and no VM was created; thin disks need only their data, so they fit where thick ones do
    not."""
    from vmkeep.jobs.restore_vm import needed_bytes
    from vmkeep.vsphere.errors import NotEnoughSpace

    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    point = run_flow(backup_vm, False, repo=str(repo), vm=SOURCE_VM, quiesce=False, **lab_env)
    loaded = Repository.open(str(repo)).load_point(point["id"])
    config = loaded.meta["vm_config"]
    thick = needed_bytes(loaded, config, vmconfig.NewVmOptions(disk_format="thick"), False)
    thin = needed_bytes(loaded, config, vmconfig.NewVmOptions(disk_format="thin"), False)
    assert thick == sum(d["capacity"] for d in config["disks"]) > thin > 0
    assert needed_bytes(loaded, config, vmconfig.NewVmOptions(disk_format="thin"), True) == (
        thin + (config["memory_mb"] << 20))
    before = _names(esx_lab)
    with esx_lab.fault("ds_full", "datastore2", count=0, bytes=(thin + thick) // 2), \
            pytest.raises(NotEnoughSpace) as caught:
        run_flow(restore_vm, False, repo=str(repo), point=point["id"], name="no-room",
                 datastore="datastore2", disk_format="thick", **lab_env)
    message = caught.value.get_message()
    assert f"restore of {point['short_id']} as no-room needs " in message
    assert "on datastore datastore2" in message and "nothing was created" in message
    assert _names(esx_lab) == before
    try:
        with esx_lab.fault("ds_full", "datastore2", count=0, bytes=(thin + thick) // 2):
            done = run_flow(restore_vm, False, repo=str(repo), point=point["id"],
                            name="thin-fits", datastore="datastore2", disk_format="thin",
                            **lab_env)
        assert done["vm"] == "thin-fits" and "thin-fits" in _names(esx_lab)
    finally:
        destroy_vm(esx_lab, "thin-fits")
