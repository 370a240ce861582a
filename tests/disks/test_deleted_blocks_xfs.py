"""Deleted blocks on XFS volumes: made by mkfs.xfs (every geometry it makes by default or on
request, a UUID changed by xfs_admin), and as Linux's own kernel leaves them in a QEMU guest
(:mod:`tests.disks.kernel_guest`) — frozen as VMware Tools' quiescing does, or not.

The free space found is exactly what ``xfs_db``'s ``freesp`` reports (an independent reader:
xfsprogs), less the blocks on the AG free lists (reserved for the trees, not free to files); a
backup with ``--exclude-deleted`` records it as zeros — ``xfs_repair -n`` finds the restored
volume clean and every other byte is the source's; a volume whose log or metadata does not vouch
for its trees is read as usual, with the reason."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.disks.deleted_helpers import (
    CHUNK,
    backed_up_and_restored,
    fill_with_noise,
    flip_byte,
    on_mbr_disk,
    scan_file,
    zeroed_where_free,
)
from tests.disks.kernel_guest import FRAGMENT, run_guest
from tests.disks.test_deleted_blocks_kernel import assert_deleted_free_and_kept_used
from tests.missing import missing as tool_missing

MiB = b.MiB
SIZE = 320 * MiB
PART = MiB
#: mkfs.xfs options of each layout searched (the size: 320 MiB unless said otherwise)
LAYOUTS: dict[str, tuple[list[str], int]] = {
    "default": ([], SIZE),
    "1k-blocks": (["-b", "size=1024"], SIZE),
    "4k-sectors": (["-s", "size=4096"], SIZE),
    "9-ags-rmapbt-reflink": (["-m", "rmapbt=1,reflink=1", "-d", "agcount=9"], 1024 * MiB),
}


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("mkfs.xfs", "xfs_db", "xfs_admin", "xfs_repair"):
        if shutil.which(tool) is None:
            tool_missing(f"missing tools: {tool} (see .ci/apt-packages: xfsprogs)")


def db(img: Path, *commands: str, expert: bool = False) -> str:
    args = [a for c in commands for a in ("-c", c)]
    return subprocess.run(["xfs_db", "-x" if expert else "-r", *args, str(img)],
                          capture_output=True, text=True, check=True).stdout


def _field(out: str, name: str) -> int:
    return next(int(line.split("=")[1]) for line in out.splitlines()
                if line.split("=")[0].strip() == name)


def xfs_db_free(img: Path) -> list[tuple[int, int]]:
    """Free ``(offset, length)`` in the volume by ``xfs_db freesp -d``, without the AG free
    lists' blocks (freesp counts them), adjacent extents merged."""
    sb = db(img, "sb 0", "p blocksize agblocks agcount")
    block, agblocks, agcount = (_field(sb, n) for n in ("blocksize", "agblocks", "agcount"))
    on_free_lists = set()
    for agno in range(agcount):
        out = db(img, f"agfl {agno}", "p bno")
        for entry in out.split("=", 1)[1].split():
            _index, _, value = entry.partition(":")
            if value != "null":
                on_free_lists.add((agno, int(value)))
    extents = []
    for line in db(img, "freesp -d").splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            agno, agbno, count = map(int, parts)
            for blk in range(agbno, agbno + count):
                if (agno, blk) not in on_free_lists:
                    extents.append((agno * agblocks + blk) * block)
    merged: list[tuple[int, int]] = []
    for offset in sorted(extents):
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + block)
        else:
            merged.append((offset, block))
    return merged


def _mkfs(path: Path, options: list[str], size: int, tree: Path | None = None) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    proto: list[str | Path] = []
    if tree is not None:
        proto_file = path.with_suffix(".proto")
        proto_file.write_text(b.xfs_proto(tree))
        proto = ["-p", proto_file]
    b.run("mkfs.xfs", "-q", "-f", *options, *proto, path)
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_free_space_is_what_xfs_db_finds(tmp_path: Path, layout: str) -> None:
    options, size = LAYOUTS[layout]
    volume = _mkfs(tmp_path / "volume.img", options, size)
    disk = on_mbr_disk(tmp_path, volume, PART)
    found = scan_file(disk, CHUNK)
    assert found.notes == []
    want = [(PART + o, n) for o, n in xfs_db_free(volume) if n >= CHUNK]
    assert [(a.offset, a.length) for a in found.areas] == want
    assert {a.volume for a in found.areas} == {"p1"}


def test_a_uuid_changed_by_xfs_admin_and_its_cleared_log(tmp_path: Path) -> None:
    """``xfs_admin -U`` moves the UUID the metadata carries into ``meta_uuid`` and rewrites the
    log (libxfs's cleared log: an unmount record whose tail names the log's end)."""
    volume = _mkfs(tmp_path / "volume.img", [], SIZE)
    b.run("xfs_admin", "-U", "generate", volume)
    found = scan_file(volume, CHUNK)
    assert found.notes == []
    assert [(a.offset, a.length) for a in found.areas] == [
        (o, n) for o, n in xfs_db_free(volume) if n >= CHUNK]


def test_a_backup_leaves_deleted_data_out_and_restores_a_clean_volume(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "keep.bin").write_bytes(random.Random(1).randbytes(3 * MiB))
    (tree / "docs").mkdir()
    (tree / "docs" / "note.txt").write_text("kept\n")
    volume = _mkfs(tmp_path / "source.img", [], SIZE, tree)  # the helper writes volume.img
    noise = fill_with_noise(volume, xfs_db_free(volume), 7)
    disk = on_mbr_disk(tmp_path, volume, PART)
    summary, point, _restored, back = backed_up_and_restored(disk, "xfs", tmp_path, PART, SIZE)
    record = point.disks[0].extra["deleted"]
    assert record["notes"] == [] and record["volumes"][0]["volume"] == "p1", record
    assert summary["bytes_excluded"] >= noise - 4 * MiB  # whole chunks only
    checked = subprocess.run(["xfs_repair", "-n", "-f", str(back)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    restored = back.read_bytes()
    differing = zeroed_where_free(volume.read_bytes(), restored, xfs_db_free(volume))
    assert differing >= noise - 4 * MiB
    assert restored.find(random.Random(1).randbytes(3 * MiB)[:MiB]) >= 0


REFUSALS = {
    "version-4": (r"XFS version 4 keeps no checksums \(not searched\)",
                  lambda tmp, v: _mkfs(v, ["-m", "crc=0"], SIZE)),
    "external-log": (r"an external log device \(its log cannot be checked\)",
                     lambda tmp, v: _mkfs(v, ["-l", f"logdev={_file(tmp / 'log', 80)},size=64m"],
                                          SIZE)),
    "realtime": (r"a realtime subvolume \(not searched\)",
                 lambda tmp, v: _mkfs(v, ["-r", f"rtdev={_file(tmp / 'rt', 64)}"], SIZE)),
    "mkfs-unfinished": ("mkfs did not finish it",
                        lambda tmp, v: _changed(v, "sb 0", "write inprogress 1")),
    "free-count": (r"AG 1: \d+ blocks free in its tree, 20000 in its AGF",
                   lambda tmp, v: _changed(v, "agf 1", "write longest 20000",
                                           "write freeblks 20000")),
    "longest": ("AG 0: its longest free extent is not the AGF's",
                lambda tmp, v: _changed(v, "agf 0", "write longest 3")),
    "agf-checksum": ("AG 2: its AGF fails its checks",
                     lambda tmp, v: _flipped(v, _ag_bytes(v, 2) + 512 + 100)),
    "tree-checksum": ("AG 3: free-space tree block 1 fails its checks",
                      lambda tmp, v: _flipped(v, _ag_bytes(v, 3) + 4096 + 200)),
    "agfl-checksum": ("AG 0: its AGFL fails its checks",
                      lambda tmp, v: _flipped(v, 3 * 512 + 40)),
}


def _file(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    return path


def _changed(volume: Path, *commands: str) -> Path:
    _mkfs(volume, [], SIZE)
    db(volume, *commands, expert=True)  # xfs_db recomputes the CRC of what it writes
    return volume


def _ag_bytes(volume: Path, agno: int) -> int:
    sb = db(volume, "sb 0", "p blocksize agblocks")
    return agno * _field(sb, "agblocks") * _field(sb, "blocksize")


def _flipped(volume: Path, at: int) -> Path:
    if not volume.exists():
        _mkfs(volume, [], SIZE)
    flip_byte(volume, at)
    return volume


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_volume_that_does_not_vouch_for_its_trees_is_read_as_usual(
    tmp_path: Path, case: str
) -> None:
    why, make = REFUSALS[case]
    volume = tmp_path / "volume.img"
    if case in ("agf-checksum", "tree-checksum", "agfl-checksum"):
        _mkfs(volume, [], SIZE)
    make(tmp_path, volume)
    found = scan_file(volume, CHUNK)
    assert found.areas == []
    [note] = found.notes
    assert re.fullmatch(f"whole: {why}: free space read as usual", note), note


# -- as Linux leaves it ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_frozen_xfs_shows_the_deleted_file_free_and_the_kept_one_in_use(
    tmp_path: Path,
) -> None:
    """Linux ≥ 5.12 covers the log at freeze: everything is written back, then transactions
    logging the superblock alone follow.  xfsprogs calls such a log dirty (``xfs_repair -n``
    declines it); by ``xfs_logprint`` all it holds is the superblock — it is at rest."""
    disk = run_guest(tmp_path, "xfs", freeze=True)
    log = subprocess.run(["xfs_logprint", "-t", str(disk)], capture_output=True, text=True,
                         check=True).stdout
    assert "state: <DIRTY>" in log and "TRANS:" in log, log
    items = [line.split()[0] for line in log.splitlines()
             if line and not line[0].isspace() and line.split()[0].endswith(":")
             and line.split()[0] not in ("TRANS:", "xfs_logprint:")]
    assert items and set(items) == {"BUF:"}, log
    assert {m for m in re.findall(r"start blkno:(\S+)", log)} == {"0x0"}, log
    found = scan_file(disk)
    assert found.notes == []
    assert [(a.offset, a.length) for a in found.areas] == [
        (o, n) for o, n in xfs_db_free(disk) if n >= MiB]
    assert_deleted_free_and_kept_used(disk, found)


@pytest.mark.slow
def test_an_xfs_left_mounted_is_read_as_usual(tmp_path: Path) -> None:
    disk = run_guest(tmp_path, "xfs", freeze=False)
    found = scan_file(disk)
    assert found.areas == []
    assert found.notes == ["whole: its log holds changes not yet written back (neither frozen "
                           "nor cleanly unmounted): free space read as usual"]


@pytest.mark.slow
def test_a_fragmented_frozen_xfs_with_a_deep_free_space_tree(tmp_path: Path) -> None:
    """1 KiB blocks and hundreds of holes: the free-space trees have more than one level."""
    disk = run_guest(tmp_path, "xfs", freeze=True, mkfs_options=("-b", "size=1024"),
                     script=FRAGMENT.format(files=900))
    levels = [_field(db(disk, f"agf {agno}", "p bnolevel"), "bnolevel")
              for agno in range(_field(db(disk, "sb 0", "p agcount"), "agcount"))]
    assert max(levels) >= 2, levels
    found = scan_file(disk, 1024)
    assert found.notes == []
    assert [(a.offset, a.length) for a in found.areas] == xfs_db_free(disk)
