"""``backup vm --exclude-deleted`` on the ESX lab (win01: NTFS ``C:`` and FAT ``D:``; local01:
ext4): from a quiesced snapshot the free clusters of ``C:`` and the free blocks of
local01's ext4 volume are recorded as zeros unread — random "deleted data" written into their
free space comes back as zeros, every other byte as it is on the source (no cluster or block in
use was taken for free); the next CBT incremental, audited at 100 %, stays ``ok``; from a
crash-consistent snapshot nothing is excluded and a warning says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmkeep.disks.deleted_blocks import find_deleted
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
VM = "win01"
MiB = 1 << 20
#: VM → the volume searched on its first disk (win01: C:, not the FAT D:; local01: its ext4 —
#: a VM no other test writes to: blind random writes, as other tests make to linux01, leave an
#: ext4 whose checksums rightly refuse the search)
SEARCHED = {"win01": "p1", "local01": "p1"}


def _write_deleted_data(lab: Any, vm: str) -> tuple[int, int]:
    """Random bytes in 1 MiB of the volume's free space (what deleted files leave behind);
    where."""
    source = lab.read_disk(vm, 0)
    scan = find_deleted(lambda off, n: source[off: off + n], len(source), 2 * MiB)
    area = scan.areas[len(scan.areas) // 2]
    at = -(-area.offset // MiB) * MiB
    assert at + MiB <= area.offset + area.length
    lab.client.write(vm, at=(at, MiB), seed=7)
    return at, MiB


def _restored(repo: str, point_id: str, tmp: Path) -> bytes:
    from vmkeep.storage.disk_restore import restore_disk

    repository = Repository.open(repo)
    out = tmp / f"r-{point_id[:8]}.img"
    restore_disk(repository, repository.load_point(point_id), 0, str(out))
    return out.read_bytes()


def _only_free_bytes_zeroed(source: bytes, restored: bytes, block: int = 64 * 1024) -> None:
    """Wherever ``restored`` differs from ``source`` it holds zeros, inside an area the source's
    own file systems call free — whatever else earlier tests left in that free space."""
    assert len(restored) == len(source)
    free = find_deleted(lambda off, n: source[off: off + n], len(source), 1).areas
    a, b = memoryview(source), memoryview(restored)
    for start in range(0, len(source), block):
        stop = min(start + block, len(source))
        if a[start:stop] == b[start:stop]:
            continue
        assert b[start:stop] == bytes(stop - start) or all(
            x == y or y == 0 for x, y in zip(a[start:stop], b[start:stop], strict=True)), start
        first = next(i for i in range(start, stop) if a[i] != b[i])
        last = next(i for i in range(stop - 1, start - 1, -1) if a[i] != b[i])
        assert any(f.offset <= first and last < f.offset + f.length for f in free), (first, last)


@pytest.mark.parametrize("vm", sorted(SEARCHED))
def test_free_blocks_of_a_quiesced_snapshot_are_not_read(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path, vm: str
) -> None:
    at, length = _write_deleted_data(lab, vm)
    first = run_flow(backup_vm, False, repo=repo, vm=vm, exclude_deleted=True,
                     cbt_audit="100", **vc_env)
    assert first["consistency"] != "crash", first
    assert not any("deleted" in w for w in first["warnings"]), first["warnings"]
    disk = first["disks"][0]
    deleted = Repository.open(repo).load_point(first["id"]).disks[0].extra["deleted"]
    assert deleted["version"] == 1 and deleted["notes"] == [], deleted
    assert [v["volume"] for v in deleted["volumes"]] == [SEARCHED[vm]]
    assert deleted["bytes"] >= length and disk["bytes_excluded"] >= length, (deleted, disk)
    source = lab.read_disk(vm, 0)
    assert source[at: at + length] != bytes(length)
    restored = _restored(repo, first["id"], tmp_path)
    assert restored[at: at + length] == bytes(length)  # the deleted data written here is gone
    _only_free_bytes_zeroed(source, restored)  # every byte in use kept

    second = run_flow(backup_vm, False, repo=repo, vm=vm, exclude_deleted=True,
                      cbt_audit="100", **vc_env)
    assert second["disks"][0]["mode"] == "cbt", second["disks"][0]
    assert second["cbt_audit"]["status"] == "ok", second["cbt_audit"]


def test_a_crash_consistent_snapshot_is_read_as_usual(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    summary = run_flow(backup_vm, False, repo=repo, vm=VM, exclude_deleted=True, quiesce=False,
                       **vc_env)
    assert summary["consistency"] == "crash"
    assert ("deleted blocks read as usual: the snapshot is not quiesced (a file system's bitmap "
            "may lag data already written)") in summary["warnings"]
    assert summary["disks"][0]["bytes_excluded"] == 0
    deleted = Repository.open(repo).load_point(summary["id"]).disks[0].extra["deleted"]
    assert deleted["bytes"] == 0 and deleted["notes"][0].startswith(
        "deleted blocks not looked for: the snapshot is not quiesced")
