"""Restores across datastore types on the strict lab (issue #16, items 1 and 5): VMs on VMFS6,
NFS, VMFS5 and vSAN restored onto vSAN, VMFS6, vVol and NFS through NFC with ``--power-on``, and
a disk restored back onto the source's datastore type attached to the running copy; every
restored disk equals the source's bytes as the lab sees them (``lab export-disk``), thin kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.restore.test_restore_lab import destroy_vm
from tests.restore.test_restore_nfc_lab import lab_env, make_source_vm, restore_cli  # noqa: F401
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
MiB = 1 << 20


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cross-ds") / "repo"
    Repository.init(str(path), image_chunk_size=256 * 1024)
    return str(path)


@pytest.mark.parametrize(
    ("source_ds", "target_ds"),
    [("datastore3", "vsanDatastore"), ("nfs01", "datastore3"), ("datastore1", "vvolDatastore"),
     ("vsanDatastore", "nfs01")],
    ids=["vmfs6-to-vsan", "nfs-to-vmfs6", "vmfs5-to-vvol", "vsan-to-nfs"],
)
def test_restore_vm_onto_another_datastore_type(
    esx_lab: Any, lab_env: dict[str, Any], repo: str, tmp_path: Path,  # noqa: F811
    source_ds: str, target_ds: str,
) -> None:
    src, name = f"x-{source_ds}", f"x-{source_ds}-on-{target_ds}"
    host = esx_lab.hosts[0]["name"]
    other = next(h["name"] for h in esx_lab.hosts[:2] if h["name"] != host)
    make_source_vm(esx_lab, src, host, source_ds)
    try:
        summary = run_flow(backup_vm, False, repo=repo, vm=src, quiesce=False, **lab_env)
        code, out, err = restore_cli(
            lab_env, repo, "vm", summary["id"][:12], "--name", name, "--host", other,
            "--datastore", target_ds, "--power-on",
        )
        assert code == 0, err
        restored = json.loads(out)
        assert restored["transport"] == "nfc" and restored["power_state"] == "poweredOn"
        [disk] = restored["disks"]
        assert disk["bytes_sent"] < 4 * MiB  # 2 MiB of data in a 64 MiB thin disk
        want, got = tmp_path / "want.raw", tmp_path / "got.raw"
        esx_lab.export_disk(src, 0, want)
        esx_lab.export_disk(name, 0, got)
        assert got.read_bytes() == want.read_bytes()
        # and the same disk restored onto the source's datastore type, attached to the running VM
        code, out, err = restore_cli(
            lab_env, repo, "disk", summary["id"][:12], "--disk", "0", "--vm", name,
            "--datastore", source_ds,
        )
        assert code == 0, err
        assert json.loads(out)["attached"]["file_name"].startswith(f"[{source_ds}] ")
        esx_lab.export_disk(name, 1, got)
        assert got.read_bytes() == want.read_bytes()
    finally:
        destroy_vm(esx_lab, name)
        destroy_vm(esx_lab, src)


def test_nfc_both_ways_with_vcenter_pinned_by_thumbprint(
    esx_lab: Any, lab_env: dict[str, Any], repo: str, tmp_path: Path,  # noqa: F811
) -> None:
    """NFC device URLs name the ESXi host that serves the lease; vmkeep verifies that host's own
    certificate (``HostSystem.config.certificate``), so pinning vCenter by ``--thumbprint``
    works for NFC backups and restores (vCenter's pin would refuse the host's certificate)."""
    from tests.restore.restore_helpers import run_cli

    src, name = "x-vvol-thumb", "x-vvol-thumb-back"
    make_source_vm(esx_lab, src, esx_lab.hosts[0]["name"], "vvolDatastore")
    pin = ["--vcenter", esx_lab.url, "--thumbprint", esx_lab.thumbprint, "--json"]
    try:
        code, out, err = run_cli("backup", "vm", src, "--no-quiesce", *pin, repo=repo)
        assert code == 0, err
        point = json.loads(out)
        assert {d["transport"] for d in point["disks"]} == {"nfc"}
        code, out, err = run_cli("restore", "vm", point["id"][:12], "--name", name,
                                 "--datastore", "datastore1", *pin, repo=repo)
        assert code == 0, err
        assert json.loads(out)["transport"] == "nfc"
        want, got = tmp_path / "want.raw", tmp_path / "got.raw"
        esx_lab.export_disk(src, 0, want)
        esx_lab.export_disk(name, 0, got)
        assert got.read_bytes() == want.read_bytes()
    finally:
        destroy_vm(esx_lab, name)
        destroy_vm(esx_lab, src)
