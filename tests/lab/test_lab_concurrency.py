"""Many backups at once: concurrent snapshots, writes, reads and removals on the small VMs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.lab.lab_helpers import (
    changed_areas,
    covered,
    enable_cbt,
    find_vm,
    flat_name,
    folder_get,
    remove_all_snapshots,
    sha,
    snapshot,
    vdisks,
    wait,
)

pytestmark = pytest.mark.lab


def test_concurrent_backup_cycles(esx_lab):
    names = ["small01", "small02", "small03", "small04"]  # small05/06: kept clean for file tests

    def cycle(name: str) -> str:
        si = esx_lab.connect()
        vm = find_vm(si, name)
        remove_all_snapshots(vm)
        enable_cbt(vm)
        s1 = snapshot(vm, f"{name}-1")
        base = vdisks(s1.config)[0]
        cid = base.backing.changeId
        frozen = sha(folder_get(esx_lab, flat_name(base.backing.fileName)))
        extents = esx_lab.write(name, 5, seed=hash(name) & 0xFFFF)
        assert sha(folder_get(esx_lab, flat_name(base.backing.fileName))) == frozen
        wait(s1.RemoveSnapshot_Task(False))
        s2 = snapshot(vm, f"{name}-2")
        areas = changed_areas(vm, s2, base.key, cid)
        assert covered(extents, areas)
        wait(s2.RemoveSnapshot_Task(False))
        assert vm.snapshot is None
        return name

    with ThreadPoolExecutor(len(names)) as pool:
        assert sorted(pool.map(cycle, names)) == sorted(names)
