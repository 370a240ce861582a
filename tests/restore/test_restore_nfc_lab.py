"""Restores through NFC import leases on the ESX lab (issue #16 items 1, 2, 5).

A test VM ``nfcsrc`` is made here (EFI + secure boot, extraConfig, reservations/shares, an NVRAM
file, a 64 MiB thin disk holding 2 MiB of data, a vmxnet3 adapter on the standard port group
``VM Network`` and an e1000e on the distributed port group ``dvpg-prod``), backed up once, then:

- restored through NFC to another host and datastore, powered on: same disk bytes (lab read API),
  thin kept (the datastore's allocated bytes grow by far less than the capacity), settings and
  NVRAM back, adapters on their networks (disconnected), new identity — and with
  ``--keep-identity`` the old UUIDs and MACs;
- restored with ``--network`` (onto a port group only the target host has) and
  ``--connect-networks``; a mapping from a network the VM never used, or onto one the host does
  not see, is refused before anything is created;
- one of its disks restored and attached to that running VM;
- a restore killed -9 mid-upload (deterministic crash point) leaves a marked VM that the sweep
  removes, and nothing else;
- ``--transport https`` still works on VMFS (and allocates the whole disk); ``direct`` is refused
  on VMFS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmkeep.licensing.store as store
from tests.restore.restore_helpers import VMKEEP, run_cli
from tests.restore.test_restore_lab import destroy_vm
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
DEV_KEYS = Path(__file__).resolve().parent.parent / "licensing" / "keys"
MiB = 1 << 20
CAPACITY = 64 * MiB
SRC = "nfcsrc"
NVRAM = b"EFI-NVRAM\x00" + bytes(range(256)) * 40 + b"Boot0001 vmkeep\x00"


@pytest.fixture(scope="module")
def lab_env(esx_lab: Any) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMKEEP_VC_USER", esx_lab.user)
        mp.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
        mp.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
        mp.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
        yield {"vcenter": esx_lab.url, "cafile": esx_lab.cafile}


def _vm_ref(si: Any, name: str) -> Any:
    from pyVmomi import vim

    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True
    )
    try:
        return next((v for v in view.view if v.name == name), None)
    finally:
        view.DestroyView()


def make_source_vm(esx_lab: Any, name: str, host: str, datastore: str) -> None:
    """A VM with everything a full restore must bring back (see the module docstring)."""
    from pyVim.connect import Disconnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    dev = vim.vm.device
    add = dev.VirtualDeviceSpec.Operation.add
    si = esx_lab.connect()
    try:
        view = si.content.viewManager.CreateContainerView(
            si.content.rootFolder, [vim.HostSystem], True
        )
        host_ref = next(h for h in view.view if h.name == host)
        view.DestroyView()
        dc = host_ref.parent
        while not isinstance(dc, vim.Datacenter):
            dc = dc.parent
        ctl = dev.ParaVirtualSCSIController(key=-100, busNumber=0, sharedBus="noSharing")
        nets = {n.name: n for n in host_ref.network}
        dvs_backing = dev.VirtualEthernetCard.DistributedVirtualPortBackingInfo
        pg = nets["dvpg-prod"]
        nics = [
            dev.VirtualVmxnet3(key=-300, backing=dev.VirtualEthernetCard.NetworkBackingInfo(
                deviceName="VM Network", network=nets["VM Network"])),
            dev.VirtualE1000e(key=-301, backing=dvs_backing(
                port=vim.dvs.PortConnection(portgroupKey=pg.key,
                                            switchUuid=pg.config.distributedVirtualSwitch.uuid))),
        ]
        disk = dev.VirtualDisk(
            key=-200, controllerKey=-100, unitNumber=0, capacityInBytes=CAPACITY,
            backing=dev.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
            ),
        )
        opt = vim.option.OptionValue
        spec = vim.vm.ConfigSpec(
            name=name, guestId="otherLinux64Guest", numCPUs=2, memoryMB=256, firmware="efi",
            bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True),
            extraConfig=[opt(key="disk.EnableUUID", value="TRUE"),
                         opt(key="app.role", value="db"),
                         opt(key="sched.swap.derivedName", value="/vmfs/old.vswp")],
            cpuAllocation=vim.ResourceAllocationInfo(
                reservation=500, shares=vim.SharesInfo(level="high", shares=4000)
            ),
            memoryAllocation=vim.ResourceAllocationInfo(reservation=128),
            files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
            deviceChange=[
                dev.VirtualDeviceSpec(operation=add, device=ctl),
                dev.VirtualDeviceSpec(operation=add, device=disk, fileOperation="create"),
                *(dev.VirtualDeviceSpec(operation=add, device=nic) for nic in nics),
            ],
        )
        pool = host_ref.parent.resourcePool
        WaitForTask(dc.vmFolder.CreateVM_Task(spec, pool, host_ref))
        vmx = _vm_ref(si, name).config.files.vmPathName
    finally:
        Disconnect(si)
    rel = vmx.split("] ", 1)[1]
    (esx_lab.datastore_dir(datastore) / rel).with_suffix(".nvram").write_bytes(NVRAM)
    esx_lab.write(name, at=(1 * MiB, MiB), seed=1)
    esx_lab.write(name, at=(40 * MiB + 4096, MiB), seed=2)


@pytest.fixture(scope="module")
def source(
    esx_lab: Any, lab_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    host = esx_lab.hosts[0]["name"]
    make_source_vm(esx_lab, SRC, host, "datastore1")
    repo = tmp_path_factory.mktemp("nfc-restore") / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    try:
        summary = run_flow(backup_vm, False, repo=str(repo), vm=SRC, quiesce=False, **lab_env)
        yield {"repo": str(repo), "id": summary["id"], "host": host, "datastore": "datastore1"}
    finally:
        destroy_vm(esx_lab, SRC)


def allocated(esx_lab: Any, datastore: str) -> int:
    return int(esx_lab.client.status()["datastore_allocated"][datastore])


def restore_cli(lab_env: dict[str, Any], repo: str, *args: str) -> tuple[int, str, str]:
    return run_cli("restore", *args, "--vcenter", lab_env["vcenter"], "--cafile",
                   lab_env["cafile"], "--json", repo=repo)


def test_backup_captures_settings_and_nvram(source):
    config = Repository.open(source["repo"]).load_point(source["id"]).meta["vm_config"]
    assert config["version"] == 2 and config["firmware"] == "efi" and config["secure_boot"]
    assert config["extra_config"]["disk.EnableUUID"] == "TRUE"
    assert config["cpu_allocation"]["reservation"] == 500
    assert config["cpu_allocation"]["shares_level"] == "high"
    assert config["nvram"]["size"] == len(NVRAM)
    # `ls` shows what a restore recreates: the networks to map before restoring elsewhere
    code, out, err = run_cli("ls", source["id"][:12], "--json", repo=source["repo"])
    assert code == 0, err
    vm = json.loads(out)["vm"]
    assert (vm["num_cpu"], vm["memory_mb"], vm["firmware"]) == (2, 256, "efi")
    assert [(n["type"], n["network"]) for n in vm["nics"]] == [("Vmxnet3", "VM Network"),
                                                              ("E1000e", "dvpg-prod")]
    code, out, err = run_cli("ls", source["id"][:12], repo=source["repo"])
    assert "  vm     2 CPU, 256 MiB, efi, otherLinux64Guest" in out, out
    assert "  nic    Vmxnet3 on 'VM Network'" in out and "E1000e on 'dvpg-prod'" in out, out


def test_restore_vm_through_nfc_to_another_host_and_datastore(esx_lab, lab_env, source, tmp_path):
    host = next(h["name"] for h in esx_lab.hosts if h["name"] != source["host"])
    name = f"{SRC}-nfc"
    before = allocated(esx_lab, "datastore2")
    try:
        code, out, err = restore_cli(
            lab_env, source["repo"], "vm", source["id"][:12], "--name", name, "--host", host,
            "--datastore", "datastore2", "--power-on",
        )
        assert code == 0, err
        summary = json.loads(out)
        assert summary["transport"] == "nfc" and summary["power_state"] == "poweredOn"
        [disk] = summary["disks"]
        # thin stays thin: only the 2 MiB of data (compressed) crossed, and little was allocated
        assert disk["bytes"] == CAPACITY and disk["bytes_sent"] < 4 * MiB
        grown = allocated(esx_lab, "datastore2") - before
        assert 2 * MiB <= grown < 8 * MiB, grown
        # bit for bit, as the lab sees both disks
        assert esx_lab.read_disk(name, 0) == esx_lab.read_disk(SRC, 0)
        _check_settings(esx_lab, name, keep_identity=False)
        # the restored disk, attached to this running VM
        code, out, err = restore_cli(
            lab_env, source["repo"], "disk", source["id"][:12], "--disk", "0", "--vm", name,
        )
        assert code == 0, err
        attached = json.loads(out)
        assert attached["attached"]["file_name"].startswith("[datastore2] ")
        assert attached["bytes_sent"] < 4 * MiB and attached["provisioning"] == "thin"
        assert esx_lab.read_disk(name, 1) == esx_lab.read_disk(SRC, 0)
        # … and onto another datastore than the VM's (its folder is made there), eagerly zeroed
        code, out, err = restore_cli(
            lab_env, source["repo"], "disk", source["id"][:12], "--disk", "0", "--vm", name,
            "--datastore", "datastore1", "--disk-format", "eagerzeroedthick",
        )
        assert code == 0, err
        attached = json.loads(out)
        assert attached["attached"]["file_name"].startswith(f"[datastore1] {name}/")
        assert attached["provisioning"] == "eagerzeroedthick"
        assert esx_lab.read_disk(name, 2) == esx_lab.read_disk(SRC, 0)
        si = esx_lab.connect()
        try:
            # the VM's own disk and the first attached one thin as backed up; the last as asked
            assert _provisioning(_vm_ref(si, name).config) == [
                (True, False), (True, False), (False, True)]
        finally:
            from pyVim.connect import Disconnect

            Disconnect(si)
        assert not [v for v in esx_lab.client.status()["vms"]
                    if v["name"].startswith("vmkeep-restore-")]
        # the attached disks were moved into place (MoveVirtualDisk): as on ESX, each
        # descriptor names its own extent, so the VM backs up again over https, which follows
        # the descriptors (the lab used to leave the helper's extent name: 404)
        again = run_flow(backup_vm, False, repo=source["repo"], vm=name, quiesce=False,
                         transport="https", **lab_env)
        assert len(again["disks"]) == 3, again
        image = tmp_path / "disk1.img"
        code, _, err = run_cli("restore", "image", again["id"][:12], "--disk", "1", "--to",
                               str(image), repo=source["repo"])
        assert code == 0, err
        assert image.read_bytes() == esx_lab.read_disk(SRC, 0)
        # the old identity while the original still runs: its UUIDs, but vSphere hands out
        # new MACs (the old ones are the original's) — named in the warnings
        code, out, err = restore_cli(
            lab_env, source["repo"], "vm", source["id"][:12], "--name", name, "--host", host,
            "--datastore", "datastore2", "--overwrite", "--keep-identity",
        )
        assert code == 0, err
        _check_settings(esx_lab, name, keep_identity=True, macs_kept=False)
        taken = [w for w in json.loads(out)["warnings"] if "got a new MAC" in w]
        assert len(taken) == 2 and all("belongs to another VM" in w for w in taken), taken
    finally:
        destroy_vm(esx_lab, name)


def _check_settings(esx_lab: Any, name: str, keep_identity: bool,
                    macs_kept: bool | None = None) -> None:
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    si = esx_lab.connect()
    try:
        src, new = _vm_ref(si, SRC).config, _vm_ref(si, name).config
        extra = {o.key: o.value for o in new.extraConfig}
        assert new.firmware == "efi" and new.bootOptions.efiSecureBootEnabled
        assert extra["disk.EnableUUID"] == "TRUE" and extra["app.role"] == "db"
        assert "sched.swap.derivedName" not in extra
        assert "vmkeep.restore.incomplete" not in extra  # removed, as ESX removes empty keys
        assert new.cpuAllocation.reservation == 500
        assert str(new.cpuAllocation.shares.level) == "high"
        assert new.memoryAllocation.reservation == 128
        assert _provisioning(new) == _provisioning(src) == [(True, False)]  # as backed up
        assert (new.uuid == src.uuid) is keep_identity
        assert (new.instanceUuid == src.instanceUuid) is keep_identity
        dev = vim.vm.device
        disks = [d for d in new.hardware.device if isinstance(d, dev.VirtualDisk)]
        assert disks and all(d.backing.diskMode == "persistent" for d in disks)
        assert any(isinstance(d, dev.ParaVirtualSCSIController) for d in new.hardware.device)
        assert _nics(si, src) == _nics(si, new) == [("VirtualVmxnet3", "VM Network"),
                                            ("VirtualE1000e", "dvpg-prod")]
        macs = [n.macAddress for n in _cards(src)], [n.macAddress for n in _cards(new)]
        assert (macs[0] == macs[1]) is (keep_identity if macs_kept is None else macs_kept), macs
        assert not any(n.connectable.startConnected for n in _cards(new))  # no clash with SRC
        rel = new.files.vmPathName.split("] ", 1)[1]
    finally:
        Disconnect(si)
    assert (esx_lab.datastore_dir("datastore2") / rel).with_suffix(".nvram").read_bytes() == NVRAM


def _cards(config: Any) -> list[Any]:
    from pyVmomi import vim

    return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]


def _provisioning(config: Any) -> list[tuple[bool, bool]]:
    """(thin, eagerly zeroed) of each disk."""
    from pyVmomi import vim

    return [(bool(d.backing.thinProvisioned), bool(d.backing.eagerlyScrub))
            for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def _nics(si: Any, config: Any) -> list[tuple[str, str]]:
    """(adapter type, network name) of each adapter, a distributed port group by its name."""
    from pyVmomi import vim

    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.Network], True)
    try:
        by_key = {n.key: n.name for n in view.view
                  if isinstance(n, vim.dvs.DistributedVirtualPortgroup)}
    finally:
        view.DestroyView()
    return [(type(card).__name__.rsplit(".", 1)[-1],
             by_key[card.backing.port.portgroupKey] if hasattr(card.backing, "port")
             else card.backing.deviceName) for card in _cards(config)]


def test_restore_vm_maps_and_connects_networks(esx_lab, lab_env, source):
    """``--network 'VM Network=Backup LAN'`` onto esx03 (the only host with that port group),
    ``--connect-networks``: the mapped adapter joins it, the other keeps its own, both connect at
    power-on.  Mistyped mappings are refused before any VM exists."""
    from pyVim.connect import Disconnect

    name = f"{SRC}-net"
    esx03 = "esx03.lab.local"
    try:
        code, out, err = restore_cli(
            lab_env, source["repo"], "vm", source["id"][:12], "--name", name, "--host", esx03,
            "--datastore", "datastore2", "--network", "VM Network=Backup LAN",
            "--connect-networks", "--disk-format", "thick",
        )
        assert code == 0, err
        summary = json.loads(out)
        assert summary["networks"] == {"VM Network": "Backup LAN"}
        assert summary["connect_networks"] and summary["warnings"] == []
        si = esx_lab.connect()
        try:
            new = _vm_ref(si, name).config
            assert _nics(si, new) == [("VirtualVmxnet3", "Backup LAN"),
                                      ("VirtualE1000e", "dvpg-prod")]
            assert all(n.connectable.startConnected for n in _cards(new))
            assert _provisioning(new) == [(False, False)]  # the thin source, restored thick
        finally:
            Disconnect(si)
    finally:
        destroy_vm(esx_lab, name)
    for mapping, code_, why in (
            ("Prod=Backup LAN", 14, "no NIC of the backed-up VM was on network 'Prod' (they were "
             "on: VM Network, dvpg-prod)"),
            ("VM Network=Backup LAN", 16, "network 'Backup LAN' on host"),
            ("VM Network=dvs-prod-DVUplinks", 16, "network 'dvs-prod-DVUplinks' on host")):
        code, _, err = restore_cli(lab_env, source["repo"], "vm", source["id"][:12], "--name",
                                   name, "--network", mapping)  # to the original host: no LAN
        assert code == code_ and why in err, err
        if code_ == 16:  # the networks the host has, its switch's uplink port group left out
            assert "(it sees: VM Network, dvpg-prod)" in err, err
    code, _, err = restore_cli(lab_env, source["repo"], "vm", source["id"][:12], "--name", name,
                               "--network", "no-equals-sign")
    assert code == 2 and "--network wants SOURCE=TARGET" in err, err
    si = esx_lab.connect()
    try:
        assert _vm_ref(si, name) is None  # nothing was created by the refused restores
    finally:
        Disconnect(si)


@pytest.mark.parametrize("transport", ["nfc", "https"])
def test_a_restore_without_network_assign_names_the_privilege(esx_lab, lab_env, source,
                                                              transport):
    """vCenter checks Network.Assign on each adapter's network when a VM is created: a restore
    account without it fails naming the privilege and the network, with nothing created."""
    from vmkeep.lab.access import RESTRICTED_USER

    u = next(u for u in esx_lab.info.users if u["name"] == RESTRICTED_USER)
    name = f"{SRC}-noassign"
    env = {"VMKEEP_VC_USER": u["name"], "VMKEEP_VC_PASSWORD": u["password"]}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code, _, err = restore_cli(lab_env, source["repo"], "vm", source["id"][:12], "--name",
                                   name, "--transport", transport)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    named = "lacks the privilege Network.Assign on Network 'VM Network' (network-"
    assert code == 16 and named in err, err
    assert "Traceback" not in err
    assert name not in {v["name"] for v in esx_lab.client.status()["vms"]}


def test_https_transport_allocates_and_direct_is_refused_on_vmfs(esx_lab, lab_env, source):
    from pyVim.connect import Disconnect

    name = f"{SRC}-put"
    before = allocated(esx_lab, "datastore2")
    try:
        code, _, err = restore_cli(
            lab_env, source["repo"], "vm", source["id"][:12], "--name", name,
            "--datastore", "datastore2", "--transport", "https", "--disk-format",
            "eagerzeroedthick", "--resource-pool", "Prod/DB",
        )
        assert code == 0, err
        si = esx_lab.connect()
        try:
            vm = _vm_ref(si, name)
            assert _provisioning(vm.config) == [(False, True)]
            assert (vm.resourcePool.name, vm.resourcePool.parent.name) == ("DB", "Prod")
        finally:
            Disconnect(si)
        assert allocated(esx_lab, "datastore2") - before >= CAPACITY  # every zero written
        assert esx_lab.read_disk(name, 0) == esx_lab.read_disk(SRC, 0)
    finally:
        destroy_vm(esx_lab, name)
    code, _, err = restore_cli(
        lab_env, source["repo"], "vm", source["id"][:12], "--name", name, "--transport",
        "direct", "--datastore-mount", f"datastore1={esx_lab.datastore_dir('datastore1')}",
    )
    assert code == 16 and "needs an NFS datastore" in err, err
    code, _, err = restore_cli(lab_env, source["repo"], "vm", source["id"][:12], "--name", name,
                               "--resource-pool", "Prod/Web")
    assert code == 16 and "resource pool 'Prod/Web' (at 'Web' there are: DB)" in err, err


def test_restore_disk_refuses_bad_input_cleanly(esx_lab, lab_env, source):
    point = source["id"][:12]
    code, _, err = restore_cli(lab_env, source["repo"], "disk", point, "--disk", "0", "--vm", SRC,
                               "--disk-format", "thick-ish")
    assert code == 2 and "--disk-format must be one of same, thin, thick, eagerzeroedthick" in err
    code, _, err = restore_cli(lab_env, source["repo"], "disk", point, "--disk", "9", "--vm", SRC)
    assert code == 14 and "has no disk 9" in err and "Traceback" not in err, err
    code, _, err = restore_cli(lab_env, source["repo"], "disk", point, "--disk", "0", "--vm",
                               "no-such-vm")
    assert code == 16 and "no-such-vm" in err and "Traceback" not in err, err
    code, _, err = restore_cli(lab_env, source["repo"], "vm", point, "--transport", "ftp")
    assert code == 2 and "--transport" in err, err
    with esx_lab.fault("ds_full", "datastore2", count=0, bytes=1 << 20):  # 1 MiB left
        code, _, err = restore_cli(lab_env, source["repo"], "disk", point, "--disk", "0",
                                   "--vm", SRC, "--datastore", "datastore2")
    assert code == 16 and "on datastore datastore2, which has 0.0 GiB free" in err, err
    assert "nothing was created" in err and "Traceback" not in err
    # a datastore the target VM's host (esx01) does not mount: refused before anything is made
    code, _, err = restore_cli(lab_env, source["repo"], "disk", point, "--disk", "0", "--vm", SRC,
                               "--datastore", "esx03-local")
    assert code == 16 and "Datastore esx03-local is not mounted on host esx01.lab.local, which " \
        f"runs VM {SRC}" in err and "nothing was changed" in err and "Traceback" not in err, err
    assert "that host mounts: datastore1, datastore2, datastore3" in err, err
    code, _, err = restore_cli(lab_env, source["repo"], "vm", point, "--name", "x-nowhere",
                               "--host", source["host"], "--datastore", "esx03-local")
    assert code == 16 and "Datastore esx03-local is not mounted on host esx01" in err, err
    assert not [v for v in esx_lab.client.status()["vms"]
                if v["name"].startswith("vmkeep-restore-")]


def _kill_mid_restore(lab_env: dict[str, Any], source: dict[str, Any], tmp: Path, name: str,
                     *args: str, at: str) -> None:
    """Run ``restore vm`` in a subprocess, park it at crash point ``at``, kill -9 it there."""
    marker = tmp / f"parked-{name}"
    env = dict(
        os.environ, PREFECT_API_URL="", VMKEEP_REPO=source["repo"],
        VMKEEP_TEST_CRASH_AT=at, VMKEEP_TEST_CRASH_MARKER=str(marker),
    )
    proc = subprocess.Popen(
        [*VMKEEP, "restore", "vm", source["id"][:12], "--name", name, "--datastore",
         "datastore2", *args, "--vcenter", lab_env["vcenter"], "--cafile", lab_env["cafile"]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300  # guards a hang only; the crash point is exact
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "restore never reached the crash point"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def _sweep(lab_env: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    code, out, err = run_cli(
        "sweep", "--older-than", "0", "--vcenter", lab_env["vcenter"], "--cafile",
        lab_env["cafile"], "--json",
    )
    assert code in (0, 16), err
    return code, json.loads(out)


def _vm_names(esx_lab: Any) -> set[str]:
    return {v["name"] for v in esx_lab.client.status()["vms"]}


def test_kill_9_mid_https_restore_leaves_a_marked_vm_the_sweep_removes(
    esx_lab, lab_env, source, tmp_path
):
    name = f"{SRC}-killed-put"
    _kill_mid_restore(lab_env, source, tmp_path, name, "--transport", "https",
                      at="restore-piece:50")
    names = _vm_names(esx_lab)
    assert name in names  # half-built, marked
    code, result = _sweep(lab_env)
    assert code == 0 and f"{name}: half-restored VM" in result["removed"]
    assert _vm_names(esx_lab) == names - {name}  # nobody else's VM was touched


def test_kill_9_mid_nfc_restore_the_lease_protects_then_times_out(
    esx_lab, lab_env, source, tmp_path
):
    name = f"{SRC}-killed-nfc"
    _kill_mid_restore(lab_env, source, tmp_path, name, at="restore-piece:20")
    names = _vm_names(esx_lab)
    assert name in names
    # as on vCenter, the VM of a held import lease cannot be destroyed, not even by the sweep …
    _, result = _sweep(lab_env)
    assert any(name in f and "import lease" in f for f in result["failed"]), result
    assert name in _vm_names(esx_lab)
    # … and once the abandoned lease times out, vCenter (the lab) removes the import's VM itself
    esx_lab.client.request("POST", "nfc-timeout", {"seconds": 0.5})
    try:
        deadline = time.monotonic() + 120
        while name in _vm_names(esx_lab):
            assert time.monotonic() < deadline, "the abandoned lease never timed out"
            time.sleep(0.2)
    finally:
        esx_lab.client.request("POST", "nfc-timeout", {"seconds": 300})
    assert _vm_names(esx_lab) == names - {name}
    code, result = _sweep(lab_env)
    assert code == 0 and not [r for r in result["removed"] if name in r]


def test_keep_identity_after_the_original_is_gone_gets_its_macs_back(esx_lab, lab_env, source):
    """A disaster recovery: the original is gone, ``--keep-identity`` brings back its UUIDs and its
    MACs under their own address types (never as static: a vCenter-assigned 00:50:56:80+ MAC
    set static keeps a VM from powering on).  Runs last: it destroys the module's source VM."""
    from pyVim.connect import Disconnect

    si = esx_lab.connect()
    try:
        old = _vm_ref(si, SRC).config
        identity = (old.uuid, old.instanceUuid,
                    [(c.macAddress, c.addressType) for c in _cards(old)])
    finally:
        Disconnect(si)
    destroy_vm(esx_lab, SRC)
    try:
        code, out, err = restore_cli(
            lab_env, source["repo"], "vm", source["id"][:12], "--keep-identity", "--power-on",
        )
        assert code == 0, err
        summary = json.loads(out)
        assert summary["vm"] == SRC and summary["power_state"] == "poweredOn", summary
        assert not [w for w in summary["warnings"] if "MAC" in w], summary["warnings"]
        si = esx_lab.connect()
        try:
            new = _vm_ref(si, SRC).config
            assert (new.uuid, new.instanceUuid,
                    [(c.macAddress, c.addressType) for c in _cards(new)]) == identity
        finally:
            Disconnect(si)
    finally:
        destroy_vm(esx_lab, SRC)
