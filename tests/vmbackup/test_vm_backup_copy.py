"""A VM's restore points copied off-site (``vmkeep copy``) are whole VM points in the destination:
both disks restore bit for bit, the VM's configuration and consistency come along, and the copy is
a valid change-tracking base — a backup made straight into the destination afterwards (the
primary site lost) reads only what CBT reports changed since the copied point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.vmbackup.vmbackup_helpers import restored_hash, sha
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.jobs.copy_points import copy_points
from vmkeep.jobs.maintenance_specs import CopySpec
from vmkeep.runtime.local import LocalRuntime
from vmkeep.storage.point_copy import CopyRecord
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
VM = "app01"  # two disks (32 MiB ext4, 16 MiB raw); the delta tests write to it too, robustly


def exported(lab: Any, disk: int, tmp: Path) -> str:
    out = tmp / f"export-{disk}.raw"
    lab.export_disk(VM, disk, out)
    digest = sha(out.read_bytes())
    out.unlink()
    return digest


def test_copied_vm_points_restore_and_serve_as_the_cbt_base(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    dst = str(tmp_path / "offsite")
    Repository.init(dst)  # 1 MiB frames; the source repository has 256 KiB ones
    first = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    lab.write(VM, 2, disk=1, seed=81)
    second = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    disks_at_second = [exported(lab, d, tmp_path) for d in range(2)]

    done = copy_points(CopySpec(repo=dst, from_repo=repo, names=[VM]), LocalRuntime())
    assert [r["source"] for r in done["copied"]] == [first["id"], second["id"]]
    incremental = done["copied"][1]
    assert {d["mode"] for d in incremental["disks"]} == {"cbt"}
    # disk 0 did not change between the two source points: nothing of it is read again
    assert incremental["disks"][0]["bytes_read"] == 0, incremental["disks"]
    assert incremental["bytes_read"] < done["copied"][0]["bytes_read"]

    source, dest = Repository.open(repo), Repository.open(dst)
    copied = dest.load_point(incremental["id"])
    original = source.load_point(second["id"])
    assert copied.kind == "vm" and copied.time == original.time
    assert CopyRecord.from_meta(copied.meta) is not None
    assert {k: v for k, v in copied.meta.items() if k != "copy"} == original.meta
    assert [d.extra["change_id"] for d in copied.disks] == [
        d.extra["change_id"] for d in original.disks]
    for d in range(2):
        assert restored_hash(dst, copied.id, d, tmp_path) == disks_at_second[d]

    # the primary site is gone: the next backup goes straight to the off-site repository,
    # incremental from the copied point's change ids
    lab.write(VM, 1, disk=0, seed=82)
    direct = run_flow(backup_vm, False, repo=dst, vm=VM, **vc_env)
    assert Repository.open(dst).load_point(direct["id"]).parent == copied.id
    assert [d["mode"] for d in direct["disks"]] == ["cbt", "cbt"], direct["disks"]
    for d in range(2):
        assert restored_hash(dst, direct["id"], d, tmp_path) == exported(lab, d, tmp_path)
