"""Inventory, TLS and datastore access of the ESX lab, through pyVmomi."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pyVim.connect import SmartConnect
from pyVmomi import vim

from tests.lab.lab_helpers import find_vm, flat_name, lab_datacenter, vdisks, vm_file_get

pytestmark = pytest.mark.lab


def test_tls_verified_with_lab_cert(esx_lab, si):
    assert si.content.about.apiType == "VirtualCenter"
    with pytest.raises(ssl.SSLError):
        SmartConnect(
            host="127.0.0.1",
            port=esx_lab.port,
            user=esx_lab.user,
            pwd=esx_lab.password,
            sslContext=ssl.create_default_context(),
        )
    pem = ssl.PEM_cert_to_DER_cert(Path(esx_lab.cafile).read_text())
    import hashlib

    assert esx_lab.thumbprint == ":".join(f"{b:02X}" for b in hashlib.sha256(pem).digest())


def test_wrong_password_rejected(esx_lab):
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(
            host="127.0.0.1",
            port=esx_lab.port,
            user=esx_lab.user,
            pwd="wrong",
            sslContext=esx_lab.ssl_context(),
        )


def test_hosts_cluster_datastores(si):
    dc = lab_datacenter(si)
    clusters = [c for c in dc.hostFolder.childEntity if isinstance(c, vim.ClusterComputeResource)]
    standalone = [
        c
        for c in dc.hostFolder.childEntity
        if isinstance(c, vim.ComputeResource) and not isinstance(c, vim.ClusterComputeResource)
    ]
    assert len(clusters) == 1 and sorted(h.name for h in clusters[0].host) == [
        "esx01.lab.local",
        "esx02.lab.local",
    ]
    assert [h.name for c in standalone for h in c.host] == ["esx03.lab.local"]
    assert sorted(ds.name for ds in dc.datastore) == [
        "datastore1", "datastore2", "datastore3", "esx03-local", "nfs01", "vsanDatastore",
        "vvolDatastore",
    ]
    vmfs = {ds.name: ds.info.vmfs.majorVersion for ds in dc.datastore if ds.summary.type == "VMFS"}
    assert vmfs == {"datastore1": 5, "datastore2": 5, "datastore3": 6, "esx03-local": 5}
    for ds in dc.datastore:  # shared storage: mounted on every host; esx03-local on esx03 only
        if ds.name == "esx03-local":
            assert [m.key.name for m in ds.host] == ["esx03.lab.local"]
            assert not ds.summary.multipleHostAccess
        else:
            assert len(ds.host) == 3 and ds.summary.multipleHostAccess


def test_vms_guests_and_disks(esx_lab, si):
    linux = find_vm(si, "linux01")
    assert linux.config.guestId == "otherLinux64Guest"
    assert linux.runtime.powerState == "poweredOn"
    disks = vdisks(linux.config)
    assert len(disks) == 2
    assert disks[0].backing.thinProvisioned is True and disks[1].backing.thinProvisioned is False
    assert disks[0].capacityInBytes == 256 << 20
    win = find_vm(si, "win01")
    assert win.config.guestId == "windows2019srv_64Guest"
    db = find_vm(si, "db01")
    assert [d.backing.diskMode for d in vdisks(db.config)] == [
        "persistent",
        "independent_persistent",
    ]
    assert find_vm(si, "tmpl-linux").config.template is True
    assert len([v for v in esx_lab.vms if v["name"].startswith("small")]) >= 4
    assert {v["guest"] for v in esx_lab.vms} >= {"linux", "windows"}


def test_vmfs_layout_and_folder_range(esx_lab, si):
    linux = esx_lab.vm("linux01")
    thin, thick = linux["disks"]
    for d in (thin, thick):
        desc = Path(d["local_path"]).read_text()
        assert 'createType="vmfs"' in desc and "-flat.vmdk" in desc
        assert os.path.getsize(flat_name(d["local_path"])) == d["capacity"]
    st_thin = os.stat(flat_name(thin["local_path"]))
    st_thick = os.stat(flat_name(thick["local_path"]))
    assert st_thin.st_blocks * 512 < thin["capacity"] // 2  # sparse
    assert st_thick.st_blocks * 512 >= thick["capacity"]  # allocated
    # GPT on the Linux disk, real bytes through /folder with Range
    head = vm_file_get(esx_lab, si, "linux01", flat_name(thin["datastore_path"]), 0, 1023)
    assert len(head) == 1024 and head[512:520] == b"EFI PART"
    with open(flat_name(thin["local_path"]), "rb") as f:
        f.seek(1 << 20)
        local = f.read(8192)
    assert (
        vm_file_get(
            esx_lab, si, "linux01", flat_name(thin["datastore_path"]), 1 << 20, (1 << 20) + 8191
        ) == local
    )
    win = esx_lab.vm("win01")["disks"][0]
    mbr = vm_file_get(esx_lab, si, "win01", flat_name(win["datastore_path"]), 0, 511)
    assert mbr[510:] == b"\x55\xaa" and mbr[446 + 4] == 0x07 and mbr[462 + 4] == 0x0C


def test_guest_filesystems_have_real_files(esx_lab):
    from dissect.volume.disk import Disk

    linux = esx_lab.vm("linux01")
    with open(flat_name(linux["disks"][0]["local_path"]), "rb") as fh:
        disk = Disk(fh)
        part = disk.partitions[0]
        from dissect.extfs import ExtFS

        fs = ExtFS(part.open())
        assert fs.get("/etc/hostname").open().read() == b"linux01\n"
    win = esx_lab.vm("win01")
    with open(flat_name(win["disks"][0]["local_path"]), "rb") as fh:
        disk = Disk(fh)
        from dissect.ntfs import NTFS

        ntfs = NTFS(disk.partitions[0].open())
        assert ntfs.mft.get("readme.txt").size() > 0
        from dissect.fat import fat

        vfat = fat.FATFS(disk.partitions[1].open())
        assert vfat.get("DATA/INVOICE.TXT").size > 0


def test_cli_status_json(esx_lab):
    env = dict(os.environ, VMKEEP_LAB_DIR=str(esx_lab.state_dir))
    out = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "lab", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    doc = json.loads(out)
    assert doc["running"] and doc["url"] == esx_lab.url and doc["thumbprint"] == esx_lab.thumbprint
    vm = next(v for v in doc["vms"] if v["name"] == "linux01")
    assert set(vm["disks"][0]) >= {"key", "capacity", "datastore_path", "local_path"}
    assert vm["guest"] == "linux"


def test_cli_status_env_points_commands_at_the_lab(esx_lab, tmp_path):
    """``eval "$(vmkeep lab status --env)"`` is enough for a vCenter command to reach the lab;
    the password travels in a 0600 file, never in the printed lines."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VMKEEP_VC", "PREFECT_API"))
    }
    env.update(VMKEEP_LAB_DIR=str(esx_lab.state_dir), VMKEEP_STATE_DIR=str(tmp_path / "state"))
    cli = f"{sys.executable} -m vmkeep.cli"
    lines = subprocess.run(
        [*cli.split(), "lab", "status", "--env"], env=env, capture_output=True, text=True,
        check=True,
    ).stdout
    assert esx_lab.info.password not in lines
    assert f"export VMKEEP_VCENTER={esx_lab.url}" in lines.splitlines()
    secret = esx_lab.state_dir / "password"
    assert secret.read_text().strip() == esx_lab.info.password
    assert secret.stat().st_mode & 0o777 == 0o600
    done = subprocess.run(
        ["bash", "-c", f'eval "$({cli} lab status --env)" && {cli} sweep --no-prefect --json'],
        env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    import json

    assert json.loads(done.stdout)["removed"] == []


def test_up_is_idempotent(esx_lab):
    from vmkeep.lab import runner

    again = runner.up(state=esx_lab.state_dir)
    assert again.pid == esx_lab.info.pid and again.url == esx_lab.url


def test_folder_accepts_session_cookie_and_rejects_anonymous(esx_lab, si):
    import urllib.error
    import urllib.request

    d = esx_lab.vm("small01")["disks"][0]
    ds, rel = d["datastore_path"][1:].split("] ", 1)
    url = (
        f"https://{esx_lab.host}:{esx_lab.port}/folder/{rel}"
        f"?dcPath={esx_lab.datacenter}&dsName={ds}"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, context=esx_lab.ssl_context())
    assert err.value.code == 401
    cookie = si._stub.cookie
    req = urllib.request.Request(url, headers={"Cookie": cookie, "Range": "bytes=0-99"})
    with urllib.request.urlopen(req, context=esx_lab.ssl_context()) as resp:
        assert resp.status == 206 and len(resp.read()) == 100
