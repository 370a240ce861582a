"""Disk files of a datastore mounted on this data mover (``--datastore-mount NAME=PATH``).

The ``direct`` transport writes VM disks through an NFS datastore the data mover mounts itself
(Veeam's "Direct NFS access").  A disk's ``fileName`` names its descriptor
(``[nfs01] vm/vm.vmdk``); the bytes live in the one flat extent the descriptor names
(``vm-flat.vmdk``), which is what this module opens.

Contracts: a datastore with no mount is :class:`~vmkeep.vsphere.errors.VSphereError`; a
descriptor that is not a single flat extent, or whose capacity differs from the caller's, is
refused before anything is opened for writing; files are opened ``O_NOFOLLOW`` (a link planted on
the datastore is never followed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vmkeep.disks.vmdk.descriptor import looks_like_descriptor, parse_descriptor
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import VSphereError

DESCRIPTOR_BYTES = 64 * 1024


@dataclass(frozen=True)
class FlatExtent:
    """A disk's flat extent: ``datastore_path`` as vSphere names it, ``local`` on this mover."""

    datastore_path: str
    local: str


def flat_extent(file_name: str, mounts: Mapping[str, str], capacity: int) -> FlatExtent:
    """The flat extent of disk ``file_name`` (descriptor or flat file) under ``mounts``,
    checked against ``capacity`` when a descriptor states one."""
    ds, path = split_datastore_path(file_name)
    root = mounts.get(ds)
    if root is None:
        raise VSphereError(f"datastore {ds!r} is not mounted on this data mover")
    local = os.path.join(root, path)
    fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        head = os.pread(fd, DESCRIPTOR_BYTES, 0)
    finally:
        os.close(fd)
    if head and looks_like_descriptor(head):
        desc = parse_descriptor(head.rstrip(b"\x00"), file_name)
        if not desc.is_flat or len(desc.extents) != 1 or desc.extents[0].file is None:
            raise VSphereError(f"{file_name}: only single flat extents can be written")
        if desc.capacity != capacity:
            raise VSphereError(f"{file_name}: {capacity} bytes for a {desc.capacity}-byte disk")
        path = os.path.join(os.path.dirname(path), desc.extents[0].file)
        local = os.path.join(root, path)
    return FlatExtent(f"[{ds}] {path}", local)


def open_for_writing(extent: FlatExtent) -> int:
    """A write descriptor of the extent (``O_RDWR``: quick rollback reads before it writes)."""
    return os.open(extent.local, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
