"""What a local datastore mount really is, for the LAN-free ``direct`` transport.

``direct`` reads disk files through a folder the user mounted on the data mover.  NFS
datastores mounted over NFS are the safe case.  VMFS can only be mounted on Linux through
vmfs-tools / vmfs6-tools (FUSE), whose VMFS6 support is experimental — read corruption and
wrong data past 256 GB are reported (glandium/vmfs-tools #8, #14) — so such a mount is refused
unless the user says ``--allow-vmfs-mount``: a backup that silently reads wrong bytes is worse
than one that asks for another transport (https, nfc, hotadd read VMFS through ESXi itself).

Pure and read-only: :func:`mount_of` parses ``/proc/self/mounts`` (longest mount point that
contains the path); :func:`check_direct_mount` raises :class:`VmfsMountRefused` or returns the
mount it found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vmkeep.errors import VmkeepError

MOUNTS_FILE = Path("/proc/self/mounts")
#: file-system types of network mounts (the supported LAN-free case for NFS datastores)
NFS_TYPES = frozenset({"nfs", "nfs4"})


class VmfsMountRefused(VmkeepError):
    """Datastore {} is mounted at {} through vmfs-tools ({}), whose VMFS support is experimental (read corruption reported): use --transport https, nfc or hotadd, or --allow-vmfs-mount if you have verified this mount"""  # noqa: E501

    exit_code = 16


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str

    @property
    def vmfs_tools(self) -> bool:
        """A vmfs-tools / vmfs6-tools FUSE mount (``vmfs-fuse``, ``vmfs6-fuse``)."""
        text = f"{self.fstype} {self.source}".lower()
        return self.fstype.startswith("fuse") and "vmfs" in text


def _unescape(field: str) -> str:
    """``/proc/mounts`` escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_of(path: str, mounts_text: str | None = None) -> Mount | None:
    """The mount holding ``path`` (None when the mount table cannot be read)."""
    if mounts_text is None:
        try:
            mounts_text = MOUNTS_FILE.read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: Mount | None = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        source, point, fstype = _unescape(fields[0]), _unescape(fields[1]), fields[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = Mount(point, fstype, source)
    return best


def check_direct_mount(
    datastore: str, path: str, *, allow_vmfs: bool = False, mounts_text: str | None = None
) -> Mount | None:
    """Refuse a vmfs-tools mount of ``datastore`` at ``path`` unless ``allow_vmfs``."""
    mount = mount_of(path, mounts_text)
    if mount is not None and mount.vmfs_tools and not allow_vmfs:
        raise VmfsMountRefused(datastore, path, mount.fstype)
    return mount
