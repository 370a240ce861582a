"""How a Linux guest mounts the subvolumes of its Btrfs volume, read from its own ``/etc/fstab``
(part of :mod:`vmkeep.disks.fs.btrfs`, which shows the volume that way).

A Btrfs root file system is rarely one subvolume.  SUSE (SLES, openSUSE) boots the default
subvolume — a snapper snapshot, ``@/.snapshots/N/snapshot`` — and mounts ``@/home``, ``@/var``,
``@/opt``, ``@/srv``, ``@/root``… on their directories through fstab; Ubuntu and Fedora mount
``@`` / ``root`` at ``/`` and ``@home`` / ``home`` at ``/home`` from the top level.  Shown as the
default subvolume alone, such a volume has an empty ``/home`` and ``/var`` (SUSE) or shows the
subvolumes as directories (Ubuntu, Fedora), and a file restore cannot find the files a user
knows by their path.

:func:`guest_layout` finds the fstab: the default subvolume's ``/etc/fstab``, else (none there)
that of the first subvolume whose fstab mounts it at ``/``.  Its entries for this volume — type
``btrfs``, device ``UUID=``/``LABEL=`` or ``/dev/disk/by-uuid/``/``by-label/`` naming this file
system, options ``subvol=`` or ``subvolid=`` — say which subvolume is ``/`` and which is mounted
on which directory.  Entries naming a device by path (``/dev/sda2``) cannot be matched to the
volume and are left out; a mount point that is not a directory of what is shown is left out.

fstab is guest data, so: it is read up to :data:`FSTAB_BYTES`, at most :data:`MAX_SUBVOLUMES`
subvolumes are looked at for it and :data:`MAX_MOUNTS` mounts used; mount points are absolute,
with no ``..``; each subvolume is mounted once, and never one that holds (is an ancestor of, or
is) ``/``'s subvolume or another mount point's — so the tree shown has no cycles.  Anything
unreadable means "no fstab": the default subvolume alone, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FSTAB_BYTES = 64 * 1024
MAX_SUBVOLUMES = 512
MAX_MOUNTS = 64
#: the top-level subvolume (``FS_TREE``)
TOP_LEVEL = 5


@dataclass(frozen=True)
class Mount:
    """An fstab entry of this volume: its mount point and the subvolume (path or id) it names
    (neither: the default subvolume)."""

    point: str
    subvol: str | None
    subvolid: int | None


@dataclass
class Layout:
    """The subvolume shown at ``/`` and, per mount-point directory (its subvolume id and inode
    number), the root of the subvolume mounted on it."""

    root: Any
    mounted: dict[tuple[int, int], Any]


def fstab_mounts(text: str, uuid: str, label: str) -> list[Mount]:
    """The entries of fstab ``text`` that mount this volume (``uuid``, ``label``)."""
    names = {f"uuid={uuid.lower()}", f"/dev/disk/by-uuid/{uuid.lower()}"}
    if label:
        names |= {f"label={label.lower()}", f"/dev/disk/by-label/{label.lower()}"}
    out: list[Mount] = []
    for line in text.splitlines():
        fields = [_unescape(f) for f in line.split("#", 1)[0].split()]
        if len(fields) < 3 or fields[2] != "btrfs" or fields[0].lower() not in names:
            continue
        point = "/" + "/".join(p for p in fields[1].split("/") if p)
        if not fields[1].startswith("/") or ".." in point.split("/"):
            continue
        subvol, subvolid = None, None
        for option in (fields[3] if len(fields) > 3 else "").split(","):
            key, _, value = option.partition("=")
            if key == "subvol" and value:
                subvol = value.strip("/")
            elif key == "subvolid" and value.isdigit():
                subvolid = int(value)
        out.append(Mount(point, subvol, subvolid))
    return out[:MAX_MOUNTS]


def guest_layout(fs: Any) -> Layout:
    """The layout of ``fs`` (a :class:`dissect.btrfs.Btrfs`) as its guest mounts it (module
    docstring); the default subvolume alone when no fstab says otherwise."""
    default = fs.default_subvolume
    try:
        subvolumes = {s.objectid: s for _, s in zip(range(MAX_SUBVOLUMES), fs.subvolumes(),
                                                    strict=False)}
        uuid, label = str(fs.uuid), str(fs.label)
        mounts = _fstab(default, uuid, label)
        root = default
        if mounts is None:
            root, mounts = _mounted_at_root(subvolumes, uuid, label)
        if not mounts:
            return Layout(default, {})
        at_root = next((m for m in mounts if m.point == "/"), None)
        if at_root is not None and (at_root.subvol or at_root.subvolid):
            root = _find(subvolumes, at_root) or root
        return Layout(root, _mount_points(fs, root, subvolumes, mounts))
    except Exception:  # a damaged tree or fstab: show the default subvolume, as before
        return Layout(default, {})


def _fstab(subvolume: Any, uuid: str, label: str) -> list[Mount] | None:
    """The mounts of ``subvolume``'s ``/etc/fstab``, or ``None`` without one."""
    try:
        node = subvolume.get("etc/fstab")
        text = node.open().read(FSTAB_BYTES).decode("utf-8", "replace")
    except Exception:
        return None
    return fstab_mounts(text, uuid, label)


def _mounted_at_root(subvolumes: dict[int, Any], uuid: str, label: str
                     ) -> tuple[Any, list[Mount]]:
    """The first subvolume whose own fstab mounts it at ``/``, and those mounts."""
    for subvolume in subvolumes.values():
        mounts = _fstab(subvolume, uuid, label) or []
        for mount in mounts:
            found = _find(subvolumes, mount)
            if mount.point == "/" and found is not None and found.objectid == subvolume.objectid:
                return subvolume, mounts
    return None, []


def _find(subvolumes: dict[int, Any], mount: Mount) -> Any:
    if mount.subvolid is not None:
        return subvolumes.get(mount.subvolid)
    for subvolume in subvolumes.values():
        if str(subvolume.path).strip("/") == mount.subvol:
            return subvolume
    return None


def _mount_points(fs: Any, root: Any, subvolumes: dict[int, Any],
                  mounts: list[Mount]) -> dict[tuple[int, int], Any]:
    mounted: dict[tuple[int, int], Any] = {}
    holders = {root.objectid}  # subvolumes that hold "/" or a mount point
    targets: list[tuple[tuple[int, int], Any]] = []
    for mount in sorted(mounts, key=lambda m: m.point.count("/")):
        target = _find(subvolumes, mount)
        if mount.point == "/" or target is None or target.objectid == root.objectid:
            continue
        node = _walk(root, mount.point, mounted)
        if node is None or not node.is_dir():
            continue
        key = (node.subvolume.objectid, node.inum)
        if key in mounted or any(target.objectid == t.objectid for _, t in targets):
            continue
        mounted[key] = target.root
        holders.add(node.subvolume.objectid)
        targets.append((key, target))
    for key, target in targets:  # nothing that holds "/" or a mount point: no cycles
        if any(target.objectid in _ancestry(fs, holder) for holder in holders):
            del mounted[key]
    return mounted


def _walk(root: Any, path: str, mounted: dict[tuple[int, int], Any]) -> Any:
    """The node at ``path`` from ``root``'s root, through the mounts so far; ``None`` if absent."""
    node = root.root
    for part in path.strip("/").split("/"):
        node = mounted.get((node.subvolume.objectid, node.inum), node)
        try:
            node = node.subvolume.get(part, node)
        except Exception:
            return None
    return mounted.get((node.subvolume.objectid, node.inum), node)


def _ancestry(fs: Any, objectid: int) -> set[int]:
    """``objectid`` and the subvolumes that hold it, up to the top level."""
    out = {objectid}
    while objectid != TOP_LEVEL and len(out) < MAX_SUBVOLUMES:
        objectid = fs.subvolume_parent(objectid)
        out.add(objectid)
    return out


def _unescape(field: str) -> str:
    """fstab's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
