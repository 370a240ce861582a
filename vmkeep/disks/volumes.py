"""Enumerate the volumes of a disk: partitions (GPT, MBR with logical partitions, APM, BSD), LVM2
logical volumes, or a bare file system spanning the whole disk.

Contract:

- ``list_volumes(disk, name="disk") -> list[Volume]`` over any seekable binary file-like.  Each
  :class:`Volume` has a stable ``name`` (``p1``, ``p2``... from the partition number, ``vg/lv`` for
  LVM, ``whole`` for a bare file system), ``offset`` in the disk (``None`` when not contiguous,
  e.g. a multi-segment LV; then ``pieces`` maps it when its segments are linear ranges of this
  disk: ``(volume offset, disk offset, length)`` in volume order, see :meth:`Volume.disk_ranges`),
  ``size``, ``fs`` (from magic bytes: ``ext``, ``xfs``, ``btrfs``, ``ntfs``, ``fat``, ``exfat``,
  ``lvm2``, ``swap``, ``luks`` or ``None``), ``kind`` and ``open()`` returning a new read-only
  file-like over the volume's bytes.
- An LVM2 physical volume appears as its partition (``fs="lvm2"``) followed by one volume per
  logical volume of its volume group(s).  An LV whose segments live on a missing PV is reported in
  ``warnings`` instead.
- A VM's volume group may span its disks (a disk added, ``pvcreate``, ``vgextend``,
  ``lvextend``: the usual way to grow a Linux VM): :func:`list_disks_volumes` lists the volumes of
  several disks, a volume group assembled from the PVs of all of them (grouped by the VG's id; a
  PV found on two disks — a cloned disk attached to its own VM — makes a second group, each PV
  going to the first group, in disk order, that lacks it), and each LV listed with the disk that
  holds its first extent (``pieces`` and ``offset`` only when
  the whole LV lies on that disk).  A PV without a metadata area (``pvcreate
  --metadatacopies 0``) joins the group whose metadata, on another PV, names its id.
  :func:`list_volumes` is the same for one disk.
- A disk with no partition table and no recognised file system yields ``[]``.
- A GPT is checked by its CRC32s; a damaged primary is replaced by the backup GPT (the last
  LBA), with a warning (:mod:`vmkeep.disks.gpt`).  A volume (partition, logical volume or whole
  disk) no file system claims is read through its backup boot sector (NTFS, FAT32, exFAT,
  :mod:`vmkeep.disks.backup_boot`) or backup superblock (ext, XFS, Btrfs,
  :mod:`vmkeep.disks.backup_superblock`) when one holds, and so is one whose ext, XFS or Btrfs
  superblock fails its checks; each with a warning.
- Corrupt tables raise :class:`VolumeError`.  Windows dynamic disks (LDM) are not decoded: the LDM
  partition is listed with ``fs=None``.
- Streams returned by ``open()`` share the disk's file-like: not safe to read from several threads
  at once without a lock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from dissect.util.stream import RangeStream

from vmkeep.disks.backup_boot import from_backup as boot_backup
from vmkeep.disks.backup_superblock import from_backup as superblock_backup
from vmkeep.disks.backup_superblock import primary_damaged
from vmkeep.disks.errors import DiskError, VolumeError
from vmkeep.disks.gpt import MAX_ENTRIES, MAX_ENTRY_SIZE, checked_table
from vmkeep.disks.image import stream_size
from vmkeep.disks.magic import identify, identify_bytes, read_head
from vmkeep.disks.overlay import overlay

if TYPE_CHECKING:
    from dissect.volume.lvm.physical import LVM2Device

EXTENDED_TYPES = (0x05, 0x0F, 0x85)
VOLUME_ALIGN = 64 * 1024


@dataclass
class Volume:
    """One volume of a disk; ``open()`` gives a fresh file-like over its bytes."""

    name: str
    offset: int | None
    size: int
    fs: str | None
    kind: str  # "partition" | "lvm" | "whole"
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)
    type: str = ""
    label: str = ""
    #: ``(volume offset, disk offset, length)`` of a volume in several ranges of the disk
    pieces: tuple[tuple[int, int, int], ...] = ()
    #: read through a backup boot sector or superblock: its primary one is damaged
    patched: bool = False
    #: ``(volume offset, disk name, disk offset, length)`` of a logical volume whose linear
    #: segments lie on several disks (:func:`list_disks_volumes`); empty otherwise
    spans: tuple[tuple[int, str, int, int], ...] = ()

    def open(self) -> BinaryIO:
        return self.opener()

    def disk_ranges(self, offset: int, length: int) -> list[tuple[int, int]] | None:
        """The disk ``(offset, length)`` ranges holding the volume's bytes ``[offset, offset +
        length)``, in order; ``None`` when the volume is not mapped onto the disk."""
        if offset < 0 or length < 0 or offset + length > self.size:
            return None
        if self.offset is not None:
            return [(self.offset + offset, length)] if length else []
        if not self.pieces:
            return None
        out: list[tuple[int, int]] = []
        end = offset + length
        for start, disk, n in self.pieces:
            lo, hi = max(offset, start), min(end, start + n)
            if lo < hi:
                out.append((disk + lo - start, hi - lo))
        return out if sum(n for _, n in out) == length else None

    def disk_extents(self, runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """The disk ranges of several volume ``(offset, length)`` runs, in order; ``None`` when
        one of them is not mapped onto the disk (see :meth:`disk_ranges`)."""
        out: list[tuple[int, int]] = []
        for offset, length in runs:
            ranges = self.disk_ranges(offset, length)
            if ranges is None:
                return None
            out.extend(ranges)
        return out

    def disks_extents(self, runs: Iterable[tuple[int, int]], home: str
                      ) -> dict[str, list[tuple[int, int]]] | None:
        """The ranges of several volume ``(offset, length)`` runs per disk name, each disk's
        in order — on the volume's ``spans`` across disks, else on its own disk ``home`` (the
        name it is listed under); ``None`` when a run is not mapped."""
        if not self.spans:
            mapped = self.disk_extents(runs)
            return None if mapped is None else {home: mapped}
        out: dict[str, list[tuple[int, int]]] = {}
        for offset, length in runs:
            end, covered = offset + length, 0
            if offset < 0 or length < 0 or end > self.size:
                return None
            for start, disk, at, n in self.spans:
                lo, hi = max(offset, start), min(end, start + n)
                if lo < hi:
                    out.setdefault(disk, []).append((at + lo - start, hi - lo))
                    covered += hi - lo
            if covered != length:
                return None
        return out


class VolumeList(list[Volume]):
    """A list of volumes that also carries non-fatal ``warnings``."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []


def _range_opener(disk: BinaryIO, offset: int, size: int) -> Callable[[], BinaryIO]:
    return lambda: RangeStream(disk, offset, size, align=VOLUME_ALIGN)


def list_volumes(disk: BinaryIO, name: str = "disk") -> VolumeList:
    """The volumes of ``disk`` (see the module docstring)."""
    out = partition_volumes(disk, name)
    add_logical_volumes({name: out})
    return out


def list_disks_volumes(disks: Iterable[tuple[str, BinaryIO]]
                       ) -> tuple[dict[str, VolumeList], list[str]]:
    """The volumes of each of ``disks`` (name, file-like) — volume groups assembled across them
    (module docstring) — and the errors of disks whose volumes cannot be read at all
    (:class:`DiskError` messages; those disks are left out)."""
    lists: dict[str, VolumeList] = {}
    errors: list[str] = []
    for name, disk in disks:
        try:
            lists[name] = partition_volumes(disk, name)
        except DiskError as exc:
            errors.append(str(exc))
    add_logical_volumes(lists)
    return lists, errors


def partition_volumes(disk: BinaryIO, name: str = "disk") -> VolumeList:
    """The partitions of ``disk``, or its whole-disk file system or PV — no logical volumes
    (:func:`add_logical_volumes` adds those)."""
    out = VolumeList()
    try:
        disk_size = stream_size(disk)
        head = read_head(disk)
    except OSError as exc:
        raise VolumeError(name, exc.strerror or repr(exc)) from exc
    kind = identify_bytes(head)
    if kind in ("gpt", "mbr"):
        table = disk
        if kind == "gpt":
            table, warning = checked_table(disk, disk_size)  # the backup GPT if need be
            if warning:
                out.warnings.append(f"{name}: {warning}")
            if table is disk:
                _check_gpt(name, head)
        _partitions(disk, disk_size, name, out, _mbr_primaries(head) if kind == "mbr" else {},
                    table)
    else:
        try:
            opener, fs, patched = _repaired(_range_opener(disk, 0, disk_size), disk_size, kind,
                                            f"{name}: the whole disk", out)
        except OSError as exc:
            raise VolumeError(name, exc.strerror or repr(exc)) from exc
        if fs is not None:
            out.append(Volume("whole", 0, disk_size, fs, "whole", opener, patched=patched))
    return out


def _check_gpt(name: str, head: bytes) -> None:
    count, entry_size = struct.unpack_from("<II", head, 512 + 80)
    if count > MAX_ENTRIES or not 128 <= entry_size <= MAX_ENTRY_SIZE:
        raise VolumeError(name, f"implausible GPT: {count} entries of {entry_size} bytes")


def _mbr_primaries(head: bytes) -> dict[int, int]:
    """{byte offset: slot number} of the primary, non-extended MBR partitions."""
    out: dict[int, int] = {}
    for i in range(4):
        ptype = head[446 + 16 * i + 4]
        (start,) = struct.unpack_from("<I", head, 446 + 16 * i + 8)
        if ptype and ptype not in EXTENDED_TYPES:
            out.setdefault(start * 512, i + 1)
    return out


def _partitions(
    disk: BinaryIO, disk_size: int, name: str, out: VolumeList, primaries: dict[int, int],
    table: BinaryIO,
) -> None:
    """Partitions as volumes; MBR logical partitions are numbered from 5 like Linux does.  The
    partition table is parsed from ``table`` (the disk, or a view with the backup GPT), the
    volumes read from ``disk``."""
    # imported here: dissect builds every partition scheme's structures at import (~25 ms),
    # which a whole-disk file system (no partition table) never needs
    from dissect.volume.disk import Disk

    try:
        table.seek(0)
        parsed = Disk(table)
    except Exception as exc:  # dissect raises many types on garbage, even RecursionError
        raise VolumeError(name, f"bad partition table: {exc!r}") from exc
    seen: set[str] = set()
    logical = 5
    for part in parsed.partitions:
        if part.type == 0xEE or part.size <= 0:
            continue
        number = part.number
        if primaries:
            number = primaries.get(part.offset, logical)
            logical += number == logical
        vname = f"p{number}"
        while vname in seen:
            vname += "_"
        seen.add(vname)
        offset, size = part.offset, part.size
        raw = part.raw
        if raw is not None and hasattr(raw, "last_lba"):  # dissect drops GPT's inclusive last LBA
            size = (raw.last_lba - raw.first_lba + 1) * parsed.sector_size
        if offset >= disk_size:
            out.warnings.append(f"{name}: partition {vname} starts beyond the end of the disk")
            continue
        if offset + size > disk_size:
            out.warnings.append(f"{name}: partition {vname} truncated to the end of the disk")
            size = disk_size - offset
        opener = _range_opener(disk, offset, size)
        try:
            opener, fs, patched = _repaired(opener, size, identify(opener()),
                                            f"{name}: partition {vname}", out)
        except OSError as exc:
            raise VolumeError(name, f"cannot read partition {vname}: {exc!r}") from exc
        label = part.name.strip("\0") if isinstance(part.name, str) else ""
        vol = Volume(vname, offset, size, fs, "partition", opener, str(part.type_str), label,
                     patched=patched)
        out.append(vol)


def _repaired(
    opener: Callable[[], BinaryIO], size: int, fs: str | None, where: str, out: VolumeList
) -> tuple[Callable[[], BinaryIO], str | None, bool]:
    """``(opener, fs, patched)`` of a volume whose boot sector or superblock is gone (no file
    system claims it) or fails its checks: read through a backup copy when one holds, with a
    warning (``patched``); else unchanged (a claimed one with a warning that its primary is
    damaged)."""
    if fs is not None and not primary_damaged(opener(), fs):
        return opener, fs, False
    patches: tuple[tuple[int, bytes], ...] = ()
    if fs is None and (boot := boot_backup(opener(), size)) is not None:
        found, patch, which = boot
        patches, what = ((0, patch),), "boot sector"
    elif (backup := superblock_backup(opener(), size, fs)) is not None:
        found, patches, which, what = backup.fs, backup.patches, backup.which, "superblock"
    if not patches:
        if fs is not None:
            out.warnings.append(f"{where}: its {fs} superblock fails its checks and no backup "
                                "copy holds; read as it is")
        return opener, fs, False
    out.warnings.append(f"{where}: its {found} {what} is damaged; read through {which}")

    def view() -> BinaryIO:
        stream = opener()
        for at, patch in patches:
            stream = overlay(stream, size, at, patch)
        return stream

    return view, found, True


@dataclass(frozen=True)
class _Member:
    """A physical volume found on disk ``disk``: its volume (partition or whole disk) there."""

    disk: str
    volume: Volume
    device: LVM2Device


def add_logical_volumes(lists: dict[str, VolumeList]) -> None:
    """Append the logical volumes of the PVs in ``lists`` (disk name → its volumes, as
    :func:`partition_volumes` gives them) to the list of the disk holding each LV's first
    extent; warnings go to the list of the disk concerned (module docstring)."""
    pvs = [(disk, vol) for disk, vols in lists.items() for vol in vols if vol.fs == "lvm2"]
    if not pvs:
        return
    # imported here: most disks have no LVM, and dissect's LVM parser costs start-up time
    from dissect.volume.lvm.physical import LVM2Device

    groups: dict[str, list[_Member]] = {}
    bare: list[_Member] = []  # PVs without a metadata area (pvcreate --metadatacopies 0)
    for disk, vol in pvs:
        try:
            dev = LVM2Device(vol.open())
            vgs = [(k, v) for k, v in (dev.metadata or {}).items() if isinstance(v, dict)]
        except Exception as exc:
            lists[disk].warnings.append(f"{disk}: unreadable LVM2 label on {vol.name}: {exc!r}")
            continue
        if dev.metadata is None:
            bare.append(_Member(disk, vol, dev))
            continue
        if len(vgs) != 1:
            lists[disk].warnings.append(f"{disk}: {vol.name} holds no single volume group")
            continue
        vg_name, vg = vgs[0]
        groups.setdefault(str(vg.get("id") or vg_name), []).append(_Member(disk, vol, dev))
    for member in bare:
        group = next((g for g in groups.values() if any(_names_pv(m.device, member.device.id)
                                                        for m in g)), None)
        if group is None:
            lists[member.disk].warnings.append(
                f"{member.disk}: {member.volume.name} is an LVM2 physical volume without "
                "metadata, and no volume group on these disks names it")
        else:
            group.append(member)
    for members in groups.values():
        # the same PV on two disks (a cloned disk attached): one group per copy, each PV in
        # the first group (in disk order) that lacks it
        copies: list[list[_Member]] = []
        for member in members:
            group = next((g for g in copies if all(m.device.id != member.device.id for m in g)),
                         None)
            if group is None:
                copies.append([member])
            else:
                group.append(member)
        for group in copies:
            _volume_group(group, lists)


def _volume_group(members: list[_Member], lists: dict[str, VolumeList]) -> None:
    """The LVs of the volume group whose PVs are ``members``, each added to its disk's list."""
    from dissect.volume.lvm import LVM2

    # the newest metadata first: dissect reads the volume group from the first device
    members = sorted(members, key=lambda m: -_seqno(m.device))
    first = members[0]
    vg_name = next(k for k, v in (first.device.metadata or {}).items() if isinstance(v, dict))
    try:
        lvm = LVM2([m.device for m in members])
    except Exception as exc:
        lists[first.disk].warnings.append(
            f"{first.disk}: unreadable volume group {vg_name}: {exc!r}")
        return
    for lv in lvm.vg.lv:
        _add_lv(lv, vg_name, members, lists)


def _names_pv(device: LVM2Device, pv_id: str) -> bool:
    """Whether the volume-group metadata ``device`` holds lists the PV ``pv_id`` (its label's
    id: the metadata's ``id`` without dashes)."""
    for value in (device.metadata or {}).values():
        if isinstance(value, dict):
            pvs = value.get("physical_volumes")
            if isinstance(pvs, dict) and any(
                    isinstance(pv, dict) and str(pv.get("id", "")).replace("-", "") == pv_id
                    for pv in pvs.values()):
                return True
    return False


def _seqno(device: LVM2Device) -> int:
    """The sequence number of the volume-group metadata ``device`` holds (-1: none)."""
    for value in (device.metadata or {}).values():
        if isinstance(value, dict) and str(value.get("seqno", "")).isdigit():
            return int(value["seqno"])
    return -1


def _home(lv: Any, members: list[_Member]) -> _Member:
    """The member holding the LV's first extent (the VG's first member when that is unknown:
    thin, cache and other segment types without stripes)."""
    try:
        seg = min(lv.segments, key=lambda s: int(s.start_extent))
        pv = lv.vg.physical_volumes[seg.stripes[0][0]]
        return next(m for m in members if m.device is pv.dev)
    except Exception:
        return members[0]


def _add_lv(lv: Any, vg_name: str, members: list[_Member], lists: dict[str, VolumeList]
            ) -> None:
    if not lv.is_visible:
        return
    home = _home(lv, members)
    name, out = home.disk, lists[home.disk]
    vname = f"{vg_name}/{lv.name}"
    try:
        stream = lv.open()
        size = int(stream.size)
    except Exception as exc:
        out.warnings.append(f"{name}: cannot open logical volume {vname}: {exc!r}")
        return
    spans = _lv_spans(lv, members)
    on_home = spans is not None and all(disk == home.disk for _, disk, _, _ in spans)
    pieces = [(at, off, n) for at, _, off, n in spans] if spans is not None and on_home else None
    offset = pieces[0][1] if pieces is not None and len(pieces) == 1 else None
    try:
        opener, fs, patched = _repaired(lv.open, size, identify(stream), f"{name}: {vname}", out)
    except OSError as exc:
        out.warnings.append(f"{name}: cannot read logical volume {vname}: {exc!r}")
        return
    out.append(Volume(vname, offset, size, fs, "lvm", opener, str(lv.type or "linear"),
                      pieces=tuple(pieces) if pieces is not None and len(pieces) > 1 else (),
                      patched=patched,
                      spans=tuple(spans) if spans is not None and not on_home else ()))


def _lv_spans(lv: Any, members: list[_Member]) -> list[tuple[int, str, int, int]] | None:
    """``(LV offset, disk name, disk offset, length)`` of each segment of an LV whose segments
    are all single-stripe (linear) ranges of ``members``' PVs, joined where contiguous on one
    disk; else ``None``."""
    try:
        extent = int(lv.vg.extent_size) * 512
        spans: list[tuple[int, str, int, int]] = []
        at = 0
        for seg in sorted(lv.segments, key=lambda s: int(s.start_extent)):
            ((pv_name, pv_extent),) = seg.stripes
            pv = lv.vg.physical_volumes[pv_name]
            member = next(m for m in members if m.device is pv.dev)
            vol = member.volume
            if vol.offset is None or int(seg.start_extent) * extent != at:
                return None
            disk = int(vol.offset + pv.pe_start * 512 + int(pv_extent) * extent)
            length = int(seg.extent_count) * extent
            if spans and spans[-1][1] == member.disk and spans[-1][2] + spans[-1][3] == disk:
                spans[-1] = (spans[-1][0], member.disk, spans[-1][2], spans[-1][3] + length)
            else:
                spans.append((at, member.disk, disk, length))
            at += length
        return spans or None
    except Exception:
        return None
