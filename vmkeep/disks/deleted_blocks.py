"""Where a guest disk holds only deleted data: the NTFS clusters and ext2/3/4, XFS and Btrfs blocks
its file systems call free.

Veeam calls it "exclude deleted file blocks" (BitLooker, NTFS only there): what a guest deleted
stays on its disk until overwritten, and an image backup would keep storing it — on a volume
where files come and go that is most of what a full backup reads beyond the live data.  This
module only *finds* the areas; the caller's read plan records them as zeros (whole chunks only),
as for swap (:mod:`vmkeep.disks.swap`).  A restored volume then holds zeros where the source held
deleted data: every file is intact, undelete tools find nothing.

Contract: :func:`find_deleted` takes a ``pread(offset, length)`` over the disk and its size and
returns :class:`DeletedArea` ranges (inside the disk and inside their volume, sorted, disjoint),
each at least ``min_bytes`` long; :func:`find_deleted_disks` does the same for a VM's disks
together (a logical volume spanning them is searched, its areas given to the disks they lie on).
**NTFS**, **ext2/3/4**, **XFS** (version 5) and **Btrfs** (one device) volumes are searched
(FAT and exFAT are read as usual): for NTFS and ext the clusters or blocks whose bit in the
allocation bitmap is clear, found byte-wise (a run of clear bits starts
and ends on a bitmap byte; partial bytes at the edges are read as usual), clipped to the
volume's cluster or block count — the NTFS backup boot sector after the last cluster is never
touched; for XFS the extents of each allocation group's free-space tree; for Btrfs what its
extent tree leaves free in each block group and the device space no chunk uses.  A volume read
through a backup boot sector or superblock (its primary damaged) is not searched.  The ext rules
are in :mod:`vmkeep.disks.ext_bitmap`, the XFS ones (its log must hold nothing unwritten) in
:mod:`vmkeep.disks.xfs_free`, the Btrfs ones (no log tree; its trees agree) in
:mod:`vmkeep.disks.btrfs_free`; the NTFS ones follow.

The bitmap is trusted only when the volume's own metadata agrees with it, else the volume is
read whole and a note says why (guest disks are untrusted; a wrong area would lose data):

- the volume is not marked dirty (``$Volume`` flag 0x0001: chkdsk pending) and not hibernated
  (``hiberfil.sys`` starting with ``hibr``/``HIBR``/``wake``: Windows Fast Startup or hibernation
  left the file system mounted, its newest state in memory);
- ``$Bitmap`` covers every cluster of the volume, and the clusters of ``$MFT``, ``$MFTMirr``,
  ``$LogFile``, ``$Bitmap`` and ``$Boot`` are all marked in use;
- the cluster count fits in the volume.

**Only a consistent snapshot may be searched**: in a crash-consistent snapshot of a running
Windows guest, ``$Bitmap`` can lag data that the cache manager already wrote (NTFS replays its
log at the next mount, re-marking those clusters — whose data would then be zeros).  The caller
decides (``backup vm``: quiesced snapshots, powered-off VMs and templates; ``backup image``: the
image is taken to be at rest).  Nothing here raises for bad guest data: a parse failure is a
note and no exclusion, and the search reads at most :data:`READ_BUDGET` bytes of metadata (the
bitmap of a 16 TiB volume of 4 KiB clusters is 512 MiB, held in memory while it is searched).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vmkeep.disks.area_scan import (
    AreaScan,
    SearchBudgetExceeded,
    SearchedDisk,
    disjoint,
    on_disks,
    search_volumes,
)
from vmkeep.disks.bitmaps import all_set, clear_runs
from vmkeep.disks.btrfs_free import free_runs as btrfs_free_runs
from vmkeep.disks.ext_bitmap import free_runs as ext_free_runs
from vmkeep.disks.pread import Pread
from vmkeep.disks.volumes import Volume
from vmkeep.disks.xfs_free import free_runs as xfs_free_runs

#: guest metadata one search may read (bytes), the bitmaps included
READ_BUDGET = 544 * 1024 * 1024
#: ``$Volume`` flag: the volume must be checked (chkdsk) before it is trusted
VOLUME_DIRTY = 0x0001
#: first bytes of a ``hiberfil.sys`` holding a hibernation image (Fast Startup included)
HIBERNATION_MAGICS = (b"hibr", b"HIBR", b"wake", b"WAKE")
#: NTFS system files whose clusters must be marked in use: $MFT, $MFTMirr, $LogFile, $Bitmap,
#: $Boot (MFT record numbers)
SYSTEM_RECORDS = {0: "$MFT", 1: "$MFTMirr", 2: "$LogFile", 6: "$Bitmap", 7: "$Boot"}
_VOLUME_INFORMATION = 0x70
#: why a volume read through a backup boot sector or superblock is not searched: the backup
#: says nothing of the volume's current state (dirty, journal to replay)
PATCHED = "its primary boot sector or superblock is damaged"


@dataclass(frozen=True)
class DeletedArea:
    """``length`` bytes at disk ``offset`` that the volume ``volume`` calls free."""

    offset: int
    length: int
    volume: str


class DeletedScan(AreaScan[DeletedArea]):
    """What :func:`find_deleted` found: the areas, and notes on what it left whole."""

    def record(self) -> dict[str, object]:
        """The restore point's per-disk ``deleted`` record (docs/format.md; record version 1):
        the bytes found free per volume, and the notes."""
        per_volume: dict[str, int] = {}
        for area in self.areas:
            per_volume[area.volume] = per_volume.get(area.volume, 0) + area.length
        return {"version": 1, "bytes": self.total,
                "volumes": [{"volume": v, "bytes": n} for v, n in per_volume.items()],
                "notes": list(self.notes)}


def not_searched(reason: str) -> DeletedScan:
    """A scan that looked at nothing, and why (e.g. a crash-consistent snapshot)."""
    return DeletedScan([], [f"deleted blocks not looked for: {reason}"])


def find_deleted(pread: Pread, size: int, min_bytes: int) -> DeletedScan:
    """The free NTFS clusters and ext, XFS and Btrfs blocks of the disk read by ``pread`` (see
    the module docstring), in areas of at least ``min_bytes``."""
    return find_deleted_disks([SearchedDisk("disk", pread, size)], min_bytes)["disk"]


def find_deleted_disks(disks: Sequence[SearchedDisk], min_bytes: int
                       ) -> dict[str, DeletedScan]:
    """The same for each of a VM's ``disks``, their volumes searched
    together (:func:`~vmkeep.disks.area_scan.search_volumes`): the free blocks of a logical
    volume spanning the disks are found, each area on the disk it lies on.  Notes on a volume
    go to the disk it is listed with."""
    lists, notes = search_volumes(disks, READ_BUDGET)
    areas: dict[str, list[DeletedArea]] = {name: [] for name in notes}
    for home, volumes in lists.items():
        for vol in volumes:
            search = _SEARCHES.get(vol.fs or "")
            if search is None:
                continue
            try:
                runs = search(vol, min_bytes) if not vol.patched else PATCHED
            except SearchBudgetExceeded:
                runs = f"its metadata is more than one search reads ({READ_BUDGET / 2**20:g} MiB)"
            except Exception as exc:  # damaged guest metadata: read it all
                runs = f"{type(exc).__name__} reading its metadata"
            if isinstance(runs, str):
                notes[home].append(f"{vol.name}: {runs}: free space read as usual")
                continue
            mapped = on_disks(vol.disks_extents(runs, home), disks)
            if mapped is None:
                notes[home].append(
                    f"{vol.name}: not mapped onto the disk: free space read as usual")
                continue
            for disk, ranges in mapped.items():
                areas[disk].extend(DeletedArea(off, n, vol.name) for off, n in ranges)
    return {name: DeletedScan(*disjoint(areas[name], notes[name], lambda a: a.volume))
            for name, _, _ in disks}


def _ntfs_free(vol: Volume, min_bytes: int) -> list[tuple[int, int]] | str:
    """Volume ``(offset, length)`` runs of free clusters, or why the bitmap is not trusted."""
    from dissect.ntfs import NTFS

    fs = NTFS(vol.open())
    cluster = fs.cluster_size
    clusters = int(fs.boot_sector.NumberSectors) * fs.sector_size // cluster
    if clusters <= 0 or clusters * cluster > vol.size:
        return f"its cluster count ({clusters}) does not fit the volume"
    flags = _volume_flags(fs)
    if flags is None:
        return "$Volume has no volume information"
    if flags & VOLUME_DIRTY:
        return "marked dirty (chkdsk pending)"
    if _hibernated(fs):
        return "hibernated (Windows Fast Startup or hibernation)"
    record = fs.mft.get(6)
    if record.resident:
        return "$Bitmap is resident"
    bitmap = record.open().read()
    if len(bitmap) * 8 < clusters:
        return f"$Bitmap covers {len(bitmap) * 8} of {clusters} clusters"
    for number, name in SYSTEM_RECORDS.items():
        for lcn, count in fs.mft.get(number).dataruns():
            if lcn is not None and not all_set(bitmap, lcn, count, clusters):
                return f"{name} lies in clusters $Bitmap calls free"
    least = -(-min_bytes // (cluster * 8))  # whole bitmap bytes of clear bits
    return [(first * cluster, (end - first) * cluster)
            for first, end in clear_runs(bitmap, clusters, least)]


def _volume_flags(fs: Any) -> int | None:
    from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE

    found = fs.mft.get(3).attributes[ATTRIBUTE_TYPE_CODE(_VOLUME_INFORMATION)]
    if not found:
        return None
    data = found[0].data()  # reserved 8 bytes, major, minor, flags (u16)
    return int.from_bytes(data[10:12], "little") if len(data) >= 12 else None


def _hibernated(fs: Any) -> bool:
    try:
        record = fs.mft.get("hiberfil.sys", root=fs.mft.get(5))
    except Exception:  # no hibernation file
        return False
    with record.open() as fh:
        return bool(fh.read(4) in HIBERNATION_MAGICS)


#: how each file system's free space is found: volume ``(offset, length)`` runs, or why not
_SEARCHES: dict[str, Callable[[Volume, int], list[tuple[int, int]] | str]] = {
    "ntfs": _ntfs_free,
    "ext": ext_free_runs,
    "xfs": xfs_free_runs,
    "btrfs": btrfs_free_runs,
}
