"""Where a guest disk holds swap: the byte ranges a backup may record as zeros without reading.

Veeam calls it "exclude swap file blocks": a guest's paging data is worthless after a restore (the
guest starts from a crash-consistent or quiesced state, never resumes from it), yet it is large
and changes all the time, so it costs every full and every incremental.  This module only
*finds* the ranges; the caller's read plan records them as zeros (whole chunks only).

Contract: :func:`find_swap` takes a ``pread(offset, length)`` over the disk (the snapshot's
consistent view) and its size, and returns :class:`SwapArea` ranges, each inside the disk and
inside its volume, sorted and disjoint.  What counts as swap:

- **Linux swap partitions and LVM logical volumes** (``SWAPSPACE2`` signature at the end of the
  first 4 KiB page): everything after that first page, which holds the signature, UUID and label
  ``swapon`` needs.  A volume whose first page says ``S1SUSPEND`` (a hibernation image) is not
  swap to this module: it is left whole.
- **Windows page, swap and hibernation files** in an NTFS volume's root: ``pagefile.sys``,
  ``swapfile.sys``, ``hiberfil.sys`` — their allocated data runs.  Windows recreates the page
  file's contents at boot; a zeroed ``hiberfil.sys`` header means "nothing to resume", a normal
  boot.
- **Linux swap files** in an ext2/3/4 or XFS volume: ``/swapfile``, ``/swap.img`` and the files
  the volume's ``/etc/fstab`` names with type ``swap`` (paths, not devices) — each only when its
  first page carries the swap signature (the file proves what it is), after that first page.
  A path another mount would hide resolves in this volume or not at all; either way the
  signature decides.  Btrfs swap files are not looked for (read whole).

Never more than the evidence allows (guest disks are untrusted; a wrong range would lose data):
runs must lie inside their volume, not overlap one another, and add up to no more than the
file's allocated size; a file failing any of these is not excluded and a note says why.  A
logical volume in several segments (one extended by ``lvextend``) is followed through them when
each is a linear range of this disk — or, searched with :func:`find_swap_disks`, of any of the
VM's disks (a volume group grown by adding a disk); any other layout (striped, mirrored, thin)
is left whole.
Nothing here raises for bad guest data: any parse failure is a note and no exclusion (reading
everything is always safe), and the search reads at most :data:`READ_BUDGET` bytes of metadata.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from vmkeep.disks.area_scan import (
    PAGE,
    AreaScan,
    SearchedDisk,
    disjoint,
    on_disks,
    search_volumes,
)
from vmkeep.disks.pread import Pread
from vmkeep.disks.volumes import Volume

SWAP_MAGICS = (b"SWAPSPACE2", b"SWAP-SPACE")
NTFS_SWAP_FILES = ("pagefile.sys", "swapfile.sys", "hiberfil.sys")
LINUX_SWAP_FILES = ("/swapfile", "/swap.img")
#: swap files taken from one ``/etc/fstab`` (a guard against a hostile file), and its bytes read
FSTAB_SWAP_FILES, FSTAB_BYTES = 16, 64 * 1024
#: guest metadata one search may read (bytes): a hostile extent tree (a loop, or a tree whose
#: nodes all point at one child) or an absurdly fragmented file stops there, nothing more excluded
READ_BUDGET = 256 * 1024 * 1024
#: areas a ``swap`` record lists (every area is excluded; its ``bytes`` counts them all)
AREAS_RECORDED = 64


@dataclass(frozen=True)
class SwapArea:
    """``length`` bytes at disk ``offset`` that hold swap; ``what`` names it for the record
    (``p2 (swap partition)``, ``p1:/pagefile.sys``)."""

    offset: int
    length: int
    what: str

    def to_json(self) -> dict[str, int | str]:
        return {"what": self.what, "offset": self.offset, "length": self.length}


class SwapScan(AreaScan[SwapArea]):
    """What :func:`find_swap` found: the areas, and notes on what it could not use."""

    def record(self) -> dict[str, object]:
        """The restore point's per-disk ``swap`` record (docs/format.md; record version 1):
        ``bytes`` counts every area, ``areas`` lists the first :data:`AREAS_RECORDED`."""
        return {"version": 1, "bytes": self.total,
                "areas": [a.to_json() for a in self.areas[:AREAS_RECORDED]],
                "notes": list(self.notes)}


def find_swap(pread: Pread, size: int) -> SwapScan:
    """The swap areas of the disk read by ``pread`` (see the module docstring)."""
    return find_swap_disks([SearchedDisk("disk", pread, size)])["disk"]


def find_swap_disks(disks: Sequence[SearchedDisk]) -> dict[str, SwapScan]:
    """The swap areas of each of a VM's ``disks``, looked for in their
    volumes together (:func:`~vmkeep.disks.area_scan.search_volumes`: a swap file in a logical
    volume spanning the disks is found, its areas on each disk they lie on).  Notes on a volume
    go to the disk it is listed with."""
    lists, notes = search_volumes(disks, READ_BUDGET)
    areas: dict[str, list[SwapArea]] = {name: [] for name in notes}
    for home, volumes in lists.items():
        for vol in volumes:
            if vol.fs not in ("swap", "ntfs", "ext", "xfs"):
                continue
            if vol.offset is None and not vol.pieces and not vol.spans:
                notes[home].append(f"{vol.name}: not mapped onto ranges of the disk: left whole")
                continue
            try:
                found = list(_volume_swap(vol))
            except Exception as exc:  # damaged guest metadata: read it all
                notes[home].append(f"{vol.name}: {type(exc).__name__} looking for swap: left whole")
                continue
            for what, runs in found:
                checked = _checked_runs(vol, runs)
                if isinstance(checked, str):
                    notes[home].append(f"{vol.name}:{what}: {checked}: left whole")
                    continue
                mapped = on_disks(vol.disks_extents(checked, home), disks)
                if mapped is None:
                    notes[home].append(f"{vol.name}:{what}: not mapped onto the disk: left whole")
                    continue
                for disk, ranges in mapped.items():
                    areas[disk].extend(SwapArea(off, n, f"{vol.name}{what}") for off, n in ranges)
    return {name: SwapScan(*disjoint(areas[name], notes[name], lambda a: a.what))
            for name, _, _ in disks}


Runs = list[tuple[int, int]]  # (offset in the volume, length) in file order


def _volume_swap(vol: Volume) -> Iterable[tuple[str, Runs | str]]:
    """``(what, runs)`` per swap area of one volume (runs: volume offsets, or why none)."""
    if vol.fs == "swap":
        with vol.open() as fh:
            page = fh.read(PAGE)
        if page[PAGE - 10 : PAGE] in SWAP_MAGICS and vol.size > PAGE:
            yield " (swap partition)", [(PAGE, vol.size - PAGE)]
    elif vol.fs == "ntfs":
        yield from _ntfs_files(vol)
    elif vol.fs in ("ext", "xfs"):
        yield from _linux_swap_files(vol)


def _ntfs_files(vol: Volume) -> Iterable[tuple[str, Runs | str]]:
    from dissect.ntfs import NTFS

    fs = NTFS(vol.open())
    cluster = fs.cluster_size
    for name in NTFS_SWAP_FILES:
        try:
            record = fs.mft.get(name, root=fs.mft.get(5))
        except Exception:
            continue
        if not record.is_file() or record.resident:
            continue
        runs = record.dataruns()
        allocated = record.size(allocated=True)
        yield f":/{name}", _clusters_to_runs(runs, cluster, allocated, skip=0)


def _linux_swap_files(vol: Volume) -> Iterable[tuple[str, Runs | str]]:
    """Swap files of an ext or XFS volume (see the module docstring)."""
    fs: Any
    if vol.fs == "ext":
        from dissect.extfs import ExtFS

        fs = ExtFS(vol.open())
    else:
        from dissect.xfs import XFS

        fs = XFS(vol.open())
    block = fs.block_size
    for path in dict.fromkeys([*LINUX_SWAP_FILES, *_fstab_swap_files(fs)]):
        try:
            inode = fs.get(path)
            if not stat.S_ISREG(inode.filetype) or inode.size <= PAGE:
                continue
            if inode.open().read(PAGE)[PAGE - 10 :] not in SWAP_MAGICS:
                continue  # not (or no longer) a swap file: its contents are data
        except Exception:  # missing, or not readable: nothing to exclude there
            continue
        try:
            runs = inode.dataruns  # a method of dissect.extfs, a cached property of dissect.xfs
            runs = runs() if callable(runs) else runs
        except Exception as exc:  # a swap file whose extent map is damaged: read it all
            yield f":{path}", f"its extents are not readable ({type(exc).__name__})"
            continue
        yield f":{path}", _clusters_to_runs(runs, block, inode.size, skip=PAGE)


def _fstab_swap_files(fs: Any) -> list[str]:
    """The absolute paths ``/etc/fstab`` on ``fs`` names as swap (not ``/dev/…`` devices, not
    ``UUID=``/``LABEL=``), ``\\040``-style escapes decoded; none when it cannot be read."""
    try:
        text = fs.get("/etc/fstab").open().read(FSTAB_BYTES).decode("utf-8", "replace")
    except Exception:
        return []
    paths: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3 or fields[2] != "swap":
            continue
        path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[0])
        if path.startswith("/") and not path.startswith("/dev/") and ".." not in path.split("/"):
            paths.append(path)
    return paths[:FSTAB_SWAP_FILES]


def _clusters_to_runs(runs: Iterable[tuple[int | None, int]], unit: int, limit: int,
                      skip: int) -> Runs | str:
    """Volume byte runs of a file's ``(cluster or None, count)`` runs, its first ``skip`` bytes
    left out; a description of the problem instead when they exceed ``limit`` bytes."""
    out: Runs = []
    at = 0  # file offset
    for lcn, count in runs:
        length = count * unit
        if lcn is not None and count > 0:
            start = max(at, skip)
            if start < at + length:
                out.append((lcn * unit + (start - at), at + length - start))
        at += length
    if at > limit + unit:
        return f"its runs ({at} bytes) exceed its allocated size ({limit})"
    return out


def _checked_runs(vol: Volume, runs: Runs | str) -> Runs | str:
    """``runs`` if each lies inside the volume and none overlaps another, else why not."""
    if isinstance(runs, str):
        return runs
    for off, n in runs:
        if off < 0 or n <= 0 or off + n > vol.size:
            return f"a run at {off}+{n} lies outside the volume"
    ordered = sorted(runs)
    for (a, n), (b, _) in pairwise(ordered):
        if b < a + n:
            return "its runs overlap"
    return ordered
