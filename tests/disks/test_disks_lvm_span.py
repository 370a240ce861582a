"""A volume group spanning a VM's disks, made by lvm2 itself: the usual way to grow a Linux VM
is to add a disk, ``pvcreate`` it, ``vgextend`` the group and ``lvextend`` the root LV onto it.
Listed disk by disk, that LV has a PV missing and its files cannot be restored; listed together
(:func:`list_disks_volumes`, what ``ls``, ``restore files`` and ``mount`` use) the group is whole
and the LV reads exactly what was written into its extents on both disks.

Disk 0 is partitioned (GPT: ``/boot`` in p1, the first PV in p2), disk 1 is a PV without a
partition table (``pvcreate /dev/sdb``).  lvm2 runs on loop devices without device-mapper
(``--driverloaded n``: metadata only); the file system's bytes are written into the LV's extents
where lvm2 reports them (``seg_pe_ranges``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.disks import disk_builders as b
from tests.missing import missing
from tests.restore.restore_helpers import run_cli
from vmkeep.disks.area_scan import PAGE
from vmkeep.disks.deleted_blocks import find_deleted_disks
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.swap import find_swap_disks
from vmkeep.disks.volumes import list_disks_volumes, list_volumes
from vmkeep.storage.repository import Repository
from vmkeep.tasks.image import back_up_image_disk, commit_restore_point

M = b.MiB
EXTENT = 4 * M
P2_FIRST_LBA = 2048 + 32 * 2048  # p1: 32 MiB from 1 MiB; p2 from 33 MiB to the end


class Lvm:
    """lvm2's tools with their configuration, backups and archives in ``system``."""

    def __init__(self, system: Path) -> None:
        system.mkdir()
        self.env = dict(os.environ, LVM_SYSTEM_DIR=str(system), LVM_SUPPRESS_FD_WARNINGS="1")

    def __call__(self, *args: str) -> str:
        return subprocess.run([*args, "--driverloaded", "n"], env=self.env, check=True,
                              capture_output=True, text=True).stdout


def _loop(path: Path, offset: int = 0) -> str:
    loop = subprocess.run(["losetup", "-f", "--show", "-o", str(offset), str(path)],
                          capture_output=True, text=True)
    if loop.returncode != 0:
        missing(f"no loop device: {loop.stderr.strip()}")
    return loop.stdout.strip()


def _spanned_vg(tmp: Path, vg: str, root_mib: tuple[int, int], *,
                bare_second: bool = False) -> dict[str, Any]:
    """disk0.img (GPT; p2 a PV) and disk1.img (a whole-disk PV; ``bare_second``: made with
    ``--metadatacopies 0``, no metadata area), VG ``vg`` over both; LV
    ``root`` of ``root_mib[0]`` MiB on disk 0 extended by ``root_mib[1]`` MiB on disk 1, LV
    ``data`` (8 MiB) on disk 0 between.  Returns the disks and where each LV's extents are:
    ``{"disks": [...], "extents": {lv: [(disk index, disk offset, bytes)]}}``."""
    for tool in ("pvcreate", "losetup", "mke2fs"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed")
    disks = [b.new_disk(tmp / "disk0.img", 128 * M), b.new_disk(tmp / "disk1.img", 96 * M)]
    total0 = 128 * M // 512
    b.write_gpt(disks[0], [(b.LINUX_FS, 2048, P2_FIRST_LBA - 1, "boot"),
                           (b.LINUX_LVM, P2_FIRST_LBA, total0 - 34, "lvm")])
    lvm = Lvm(tmp / "lvm")
    devs = [_loop(disks[0], P2_FIRST_LBA * 512), _loop(disks[1])]
    starts = {devs[0]: P2_FIRST_LBA * 512, devs[1]: 0}
    index = {devs[0]: 0, devs[1]: 1}
    try:
        lvm("pvcreate", "-q", devs[0])
        lvm("pvcreate", "-q", *(["--metadatacopies", "0"] if bare_second else []), devs[1])
        lvm("vgcreate", "-q", "-s", "4m", vg, devs[0])
        lvm("lvcreate", "-q", "-an", "-Zn", "-L", f"{root_mib[0]}m", "-n", "root", vg, devs[0])
        lvm("lvcreate", "-q", "-an", "-Zn", "-L", "8m", "-n", "data", vg, devs[0])
        lvm("vgextend", "-q", vg, devs[1])  # the disk added later
        lvm("lvextend", "-q", "-L", f"+{root_mib[1]}m", f"{vg}/root", devs[1])
        rows = json.loads(lvm("lvs", "--reportformat", "json", "-o",
                              "lv_name,seg_pe_ranges", vg))["report"][0]["lv"]
        pe_start = {dev: int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o",
                                 "pe_start", dev).strip()) for dev in devs}
    finally:
        for dev in devs:
            subprocess.run(["losetup", "-d", dev], check=False)
    extents: dict[str, list[tuple[int, int, int]]] = {}
    for row in rows:  # "/dev/loop3:0-9"
        dev, pes = row["seg_pe_ranges"].rsplit(":", 1)
        first, last = (int(n) for n in pes.split("-"))
        extents.setdefault(row["lv_name"], []).append(
            (index[dev], starts[dev] + pe_start[dev] + first * EXTENT, (last - first + 1) * EXTENT))
    assert sorted({d for d, _o, _n in extents["root"]}) == [0, 1], extents
    return {"disks": disks, "extents": extents}


def _write_lv(layout: dict[str, Any], lv: str, data: bytes) -> None:
    pos = 0
    for disk, offset, length in layout["extents"][lv]:
        with open(layout["disks"][disk], "r+b") as f:
            f.seek(offset)
            f.write(data[pos:pos + length])
        pos += length


@pytest.fixture(scope="module")
def spanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("lvm-span")
    layout = _spanned_vg(tmp, f"span{os.getpid()}", (40, 40))
    tree = tmp / "tree"
    layout["hashes"] = b.make_tree(tree, symlinks=False)
    big = os.urandom(50 * M)  # more than disk 0's part of the LV: its tail is on disk 1
    (tree / "var").mkdir()
    (tree / "var" / "grown.bin").write_bytes(big)
    root = tmp / "root.fs"
    b.mkfs_ext4(tree, root, size_mb=80)
    layout["root"] = root.read_bytes()
    _write_lv(layout, "root", layout["root"])
    boot = tmp / "boot.fs"
    b.mkfs_ext4(tree / "deep", boot, size_mb=32)
    b.place(layout["disks"][0], M, boot)
    layout["tree"] = tree
    return layout


def test_a_volume_group_over_two_disks_is_whole_when_listed_together(spanned) -> None:
    with open(spanned["disks"][0], "rb") as d0, open(spanned["disks"][1], "rb") as d1:
        alone = list_volumes(d0, "disk0")  # disk by disk: a PV missing
        assert [v.name for v in alone if v.kind == "lvm"] == [
            v.name for v in alone if v.kind == "lvm" and v.name.endswith("/data")]
        assert any("root" in w for w in alone.warnings), alone.warnings
        lists, errors = list_disks_volumes([("disk0", d0), ("disk1", d1)])
        assert errors == [] and lists["disk0"].warnings == [] and lists["disk1"].warnings == []
        found = {v.name: v for v in lists["disk0"] if v.kind == "lvm"}
        assert sorted(n.split("/")[1] for n in found) == ["data", "root"]
        root = next(v for n, v in found.items() if n.endswith("/root"))
        assert (root.size, root.fs, root.offset, root.pieces) == (80 * M, "ext", None, ())
        assert root.open().read() == spanned["root"]
        assert [v.name for v in lists["disk1"]] == ["whole"]  # the PV, its LVs listed on disk 0
        fs = open_filesystem(root.open(), "root", "ext")
        with fs.open("/var/grown.bin") as f:
            assert f.read() == (spanned["tree"] / "var" / "grown.bin").read_bytes()


def test_files_restore_from_a_two_disk_point(spanned, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    results = [back_up_image_disk(repo, str(disk), index=i)
               for i, disk in enumerate(spanned["disks"])]
    point = commit_restore_point(repo, "web01", results, kind="vm")
    code, out, err = run_cli("ls", point.id[:12], "--json", repo=tmp_path / "repo")
    assert code == 0, err
    volumes = {v["name"]: v for v in json.loads(out)["volumes"]}
    root = next(n for n in volumes if n.startswith("disk0-") and n.endswith("-root"))
    assert volumes[root]["fs"] == "ext"
    code, out, err = run_cli("restore", "files", f"{point.id[:12]}:{root}/var", "--to",
                             str(tmp_path / "out"), "--json", repo=tmp_path / "repo")
    assert code == 0, err
    assert (tmp_path / "out" / "var" / "grown.bin").read_bytes() == (
        spanned["tree"] / "var" / "grown.bin").read_bytes()


def test_cloned_disks_attached_to_their_own_vm_are_a_second_group(tmp_path: Path) -> None:
    """The same PVs (ids) on two disks each: not one group of four PVs but two, each PV in the
    first group (in disk order) that lacks it — both LVs whole, listed on disk 0 and disk 2;
    with one clone only, its group lacks the other PV and says so."""
    layout = _spanned_vg(tmp_path, f"clone{os.getpid()}", (8, 8))
    data = os.urandom(16 * M)
    _write_lv(layout, "root", data)
    copies = [tmp_path / "copy0.img", tmp_path / "copy1.img"]
    for copy, disk in zip(copies, layout["disks"], strict=True):
        shutil.copyfile(disk, copy)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(p, "rb")) for p in [*layout["disks"], *copies]]
        lists, errors = list_disks_volumes([(f"disk{i}", fh) for i, fh in enumerate(handles)])
        assert errors == [] and all(not vols.warnings for vols in lists.values())
        roots = {n: [v for v in vols if v.name.endswith("/root")] for n, vols in lists.items()}
        assert [len(roots[f"disk{i}"]) for i in range(4)] == [1, 0, 1, 0]
        assert roots["disk0"][0].open().read() == roots["disk2"][0].open().read() == data
        lists, _ = list_disks_volumes([(f"disk{i}", fh) for i, fh in enumerate(handles[:3])])
        roots = {n: [v for v in vols if v.name.endswith("/root")] for n, vols in lists.items()}
        assert [len(roots[f"disk{i}"]) for i in range(3)] == [1, 0, 0]
        assert roots["disk0"][0].open().read() == data
        assert any("root" in w for w in lists["disk2"].warnings), lists["disk2"].warnings


def test_a_physical_volume_without_metadata_joins_the_group_that_names_it(
        tmp_path: Path) -> None:
    """``pvcreate --metadatacopies 0`` (a PV whose label has no metadata area: the volume
    group's metadata lives on the other PVs only) on the disk added later: it joins the group
    whose metadata lists its id; alone it is named, not silently dropped."""
    layout = _spanned_vg(tmp_path, f"bare{os.getpid()}", (8, 8), bare_second=True)
    data = os.urandom(16 * M)
    _write_lv(layout, "root", data)
    with open(layout["disks"][0], "rb") as d0, open(layout["disks"][1], "rb") as d1:
        lists, errors = list_disks_volumes([("disk0", d0), ("disk1", d1)])
        assert errors == [] and not lists["disk0"].warnings and not lists["disk1"].warnings
        (root,) = [v for v in lists["disk0"] if v.name.endswith("/root")]
        assert root.size == 16 * M and root.open().read() == data
        alone = list_volumes(d1, "disk1")
        assert [v.name for v in alone] == ["whole"]
        assert any("without metadata" in w for w in alone.warnings), alone.warnings


def _lv_to_disks(layout: dict[str, Any], lv: str, runs: list[tuple[int, int]]
                 ) -> dict[str, list[tuple[int, int]]]:
    """Volume ``(offset, length)`` runs of ``lv`` as disk ranges per disk index (``"0"``,
    ``"1"``), through the extents lvm2 reported — the oracle for the searches' own mapping."""
    out: dict[str, list[tuple[int, int]]] = {}
    for offset, length in runs:
        at = 0
        for disk, start, n in layout["extents"][lv]:
            lo, hi = max(offset, at), min(offset + length, at + n)
            if lo < hi:
                ranges = out.setdefault(str(disk), [])
                if ranges and ranges[-1][0] + ranges[-1][1] == start + lo - at:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + hi - lo)
                else:
                    ranges.append((start + lo - at, hi - lo))
            at += n
    return out


def _joined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((offset, length))
    return out


@pytest.fixture(scope="module")
def grown_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A root LV grown onto a second disk (40 + 40 MiB) holding an ext4 with a swap file
    (``/swap.img``, as Ubuntu makes it) and free space on both sides of the disk boundary."""
    tmp = tmp_path_factory.mktemp("lvm-span-areas")
    layout = _spanned_vg(tmp, f"areas{os.getpid()}", (40, 40))
    layout["vg"] = f"areas{os.getpid()}"
    tree = tmp / "tree"
    layout["hashes"] = b.make_tree(tree, symlinks=False)
    swap = tree / "swap.img"
    swap.write_bytes(random.Random(5).randbytes(12 * M))
    b.run("mkswap", swap)
    layout["swap"] = swap.read_bytes()
    (tree / "var").mkdir()
    (tree / "var" / "grown.bin").write_bytes(os.urandom(30 * M))
    root = tmp / "root.fs"
    b.mkfs_ext4(tree, root, size_mb=80)
    layout["root"] = root
    _write_lv(layout, "root", root.read_bytes())
    layout["tree"] = tree
    return layout


def _preads(handles: list[Any]) -> list[tuple[str, Any, int]]:
    """The disks as a VM backup searches them: ``(index, pread, size)``."""
    return [(str(i), lambda o, n, fd=fh.fileno(): os.pread(fd, n, o), os.fstat(fh.fileno()).st_size)
            for i, fh in enumerate(handles)]


def test_swap_and_free_blocks_of_a_volume_spanning_disks_are_found_on_each(
        grown_root: dict[str, Any], tmp_path: Path) -> None:
    """What ``backup vm --exclude-swap --exclude-deleted`` searches on a VM's disks together:
    the swap file and the free blocks of the spanning root LV, each area on the disk it lies on
    — exactly what the same searches find in the LV's own bytes, mapped through lvm2's extents;
    zeroing them all on copies of the disks leaves every file intact."""
    layout = grown_root
    with open(layout["root"], "rb") as fh:  # the LV's bytes alone: volume "whole"
        alone = [("disk", lambda o, n, fd=fh.fileno(): os.pread(fd, n, o),
                  layout["root"].stat().st_size)]
        lv_free = find_deleted_disks(alone, 256 * 1024)["disk"]
        lv_swap = find_swap_disks(alone)["disk"]
    assert lv_free.notes == [] and lv_free.total > 4 * M, lv_free.notes
    assert lv_swap.total == len(layout["swap"]) - PAGE, lv_swap.record()
    with open(layout["disks"][0], "rb") as d0, open(layout["disks"][1], "rb") as d1:
        disks = _preads([d0, d1])
        free = find_deleted_disks(disks, 256 * 1024)
        swap = find_swap_disks(disks)
    for found, oracle in ((free, lv_free), (swap, lv_swap)):
        want = _lv_to_disks(layout, "root", oracle.extents)
        assert {d: _joined(found[d].extents) for d in ("0", "1") if found[d].areas} == {
            d: _joined(r) for d, r in want.items()}
        assert all(found[d].notes == [] for d in ("0", "1")), {d: found[d].notes for d in found}
    assert free["1"].total > 0  # the free tail of the LV lies on the disk added later
    assert {a.what for d in ("0", "1") for a in swap[d].areas} == {
        f"{layout['vg']}/root:/swap.img"}
    copies = []
    for i, path in enumerate(layout["disks"]):
        copy = tmp_path / f"zeroed{i}.img"
        shutil.copyfile(path, copy)
        with open(copy, "r+b") as f:
            for offset, length in [*free[str(i)].extents, *swap[str(i)].extents]:
                f.seek(offset)
                f.write(bytes(length))
        copies.append(copy)
    with open(copies[0], "rb") as d0, open(copies[1], "rb") as d1:
        lists, _ = list_disks_volumes([("disk0", d0), ("disk1", d1)])
        (root,) = [v for v in lists["disk0"] if v.name.endswith("/root")]
        fs = open_filesystem(root.open(), "root", "ext")
        for rel, digest in layout["hashes"].items():
            with fs.open(f"/{rel}") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, rel
        with fs.open("/var/grown.bin") as f:
            assert f.read() == (layout["tree"] / "var" / "grown.bin").read_bytes()
        with fs.open("/swap.img") as f:
            assert f.read(PAGE) == layout["swap"][:PAGE]  # swapon's page kept
            assert f.read() == bytes(len(layout["swap"]) - PAGE)


def test_areas_outside_a_disk_are_never_recorded() -> None:
    """A hostile LV's segments may claim more than its disk holds: such a mapping is refused
    (the volume read as usual), not recorded as zeros past the disk's end."""
    from vmkeep.disks.area_scan import on_disks

    disks = [("0", None, 100), ("1", None, 50)]
    assert on_disks({"0": [(0, 100)], "1": [(10, 40)]}, disks) == {"0": [(0, 100)],
                                                                  "1": [(10, 40)]}
    assert on_disks({"1": [(10, 41)]}, disks) is None
    assert on_disks({"2": [(0, 1)]}, disks) is None
    assert on_disks(None, disks) is None
