"""A VM encrypted by vSphere VM Encryption: its disks' datastore files are ciphertext (the lab
enciphers what /folder serves of them), vSphere exports no encrypted VM (NFC), and the host
decrypts a disk only for an encrypted VM it is hot-added to.  vmkeep refuses to read such a
disk over https or NFC — it stored the ciphertext as the disk before, a restore point that
restores noise — and backs it up with --transport hotadd from an encrypted mover.

VMs used: crypt01, created here and destroyed again; the mover vmkeep-mover01, encrypted for
one test and decrypted again.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.lab.lab_helpers import find_vm, vdisks, wait
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from tests.vmbackup.vmbackup_helpers import (
    create_lab_vm,
    flat_disk_files,
    restored_hash,
    sha,
    vmkeep_snapshots,
)

pytestmark = pytest.mark.lab
VM = "crypt01"
MIB = 1 << 20
PLAIN = bytes(range(256)) * 4096  # 1 MiB
KEY = vim.encryption.CryptoKeyId(keyId="key-0001",
                                 providerId=vim.encryption.KeyProviderId(id="kms-lab"))


def _folder_get(lab: Any, rel: str) -> bytes:
    url = f"https://{lab.host}:{lab.port}/folder/{rel}?dcPath={lab.datacenter}&dsName=datastore1"
    auth = base64.b64encode(f"{lab.user}:{lab.password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": "Basic " + auth})
    with urllib.request.urlopen(req, context=lab.ssl_context()) as resp:
        return bytes(resp.read())


@pytest.fixture
def crypt01(lab: Any) -> Iterator[tuple[Any, bytes]]:
    """crypt01 on datastore1 (esx01), powered off: Hard disk 1 (4 MiB) encrypted under ``KEY``,
    Hard disk 2 (1 MiB of ``PLAIN``) not (vSphere encrypts disk by disk)."""
    data = os.urandom(MIB) + bytes(3 * MIB)
    dev = vim.vm.device
    disk = dev.VirtualDisk(key=2000, unitNumber=0, controllerKey=1000, capacityInBytes=len(data),
                           backing=dev.VirtualDisk.FlatVer2BackingInfo(
                               fileName=flat_disk_files(lab, VM, VM, data), diskMode="persistent",
                               thinProvisioned=True, keyId=KEY))
    plain = dev.VirtualDisk(key=2001, unitNumber=1, controllerKey=1000, capacityInBytes=MIB,
                            backing=dev.VirtualDisk.FlatVer2BackingInfo(
                                fileName=flat_disk_files(lab, VM, "plain", PLAIN),
                                diskMode="persistent", thinProvisioned=True))
    vm = create_lab_vm(lab, VM, [disk, plain])
    try:
        yield vm, data
    finally:
        destroy_vm(lab, VM)


def test_the_lab_serves_an_encrypted_disk_as_ciphertext_and_exports_none(
    lab: Any, crypt01: tuple[Any, bytes]
) -> None:
    vm, data = crypt01
    assert vdisks(vm.config)[0].backing.keyId.keyId == "key-0001"
    served = _folder_get(lab, f"{VM}/{VM}-flat.vmdk")
    assert len(served) == len(data) and served[:MIB] != data[:MIB]
    assert served[MIB:] != bytes(3 * MIB)  # zeros are enciphered too
    assert lab.read_disk(VM, 0) == data  # the host's own view: in the clear
    with pytest.raises(vmodl.fault.NotSupported):
        vm.ExportVm()


def test_an_encrypted_disk_is_refused_over_https_and_nfc(
    lab: Any, crypt01: tuple[Any, bytes], vc_env: dict[str, Any], repo: str
) -> None:
    vc = ("--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"])
    for transport in ("auto", "https", "nfc"):
        code, out, err = run_cli("backup", "vm", VM, *vc, "--transport", transport, repo=repo)
        assert code == 16 and "Traceback" not in err, (transport, err)
        line = " ".join(err.split())
        assert f"VM {VM} not backed up: " in line and "is encrypted (vSphere VM Encryption)" in line
        assert "--transport hotadd from a data-mover VM that is encrypted itself" in line
        assert out == "" and vmkeep_snapshots(lab) == []
    code, out, _err = run_cli("list", "--json", repo=repo)
    assert json.loads(out)["points"] == []  # no point of ciphertext

    # the encrypted disk left out by the job: the plain one is read over https as any disk
    code, out, err = run_cli("backup", "vm", VM, *vc, "--transport", "https", "--exclude-disk",
                             f"{VM}/scsi0:0", "--json", repo=repo)
    assert code == 0, err
    assert [d["key"] for d in json.loads(out)["disks"]] == [2001]

    code, out, err = run_cli("doctor", *vc, "--json")
    vms = {v["name"]: v for v in json.loads(out)["vms"]}
    assert any("encrypted disk(s) Hard disk 1" in f["reason"] for f in vms[VM]["findings"])


def _encrypt(vm: Any, key: Any | None) -> None:
    """Encrypt (``key``) or decrypt the VM, powered off as vSphere wants it; its power state is
    put back."""
    was_on = vm.runtime.powerState == "poweredOn"
    if was_on:
        wait(vm.PowerOffVM_Task())
    crypto = (vim.encryption.CryptoSpecEncrypt(cryptoKeyId=key) if key is not None
              else vim.encryption.CryptoSpecDecrypt())
    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(crypto=crypto)))
    if was_on:
        wait(vm.PowerOnVM_Task())


def test_hotadd_reads_an_encrypted_disk_only_from_an_encrypted_mover(
    lab: Any, crypt01: tuple[Any, bytes], vc_env: dict[str, Any], repo: str,
    mover: dict[str, Any], tmp_path: Path,
) -> None:
    _vm, data = crypt01
    vc = ("--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"])
    code, _out, err = run_cli("backup", "vm", VM, *vc, "--transport", "hotadd", repo=repo)
    assert code == 16 and "not encrypted" in " ".join(err.split()), err  # vSphere refuses
    assert vmkeep_snapshots(lab) == []

    mover_vm = find_vm(lab.connect(), mover["name"])
    _encrypt(mover_vm, KEY)
    try:
        assert mover_vm.config.keyId.keyId == "key-0001"
        code, out, err = run_cli("backup", "vm", VM, *vc, "--transport", "hotadd", "--json",
                                 repo=repo)
        assert code == 0, err
        summary = json.loads(out)
        assert [d["transport"] for d in summary["disks"]] == ["hotadd", "hotadd"]
        assert restored_hash(repo, summary["id"], 0, tmp_path) == sha(data)
        assert restored_hash(repo, summary["id"], 1, tmp_path) == sha(PLAIN)
    finally:
        _encrypt(mover_vm, None)
    assert find_vm(lab.connect(), mover["name"]).config.keyId is None
