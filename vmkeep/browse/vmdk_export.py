"""Export a restored raw disk as a VMDK: a monolithicFlat descriptor beside its flat extent.

Contract: :func:`flat_names` maps ``name.vmdk`` to ``(name.vmdk, name-flat.vmdk)``;
:func:`write_flat_descriptor` writes the descriptor (atomically: temporary name, fsync, rename)
naming the flat file by its base name only, so the pair can be moved together and uploaded to a
datastore (or opened by qemu-img, VMware tools and :func:`vmkeep.disks.open_disk`).  The flat
file must already hold the disk; its size is padded up to whole 512-byte sectors.
"""

from __future__ import annotations

import os
import secrets

from vmkeep.disks.vmdk.descriptor import SECTOR, Extent, geometry, render_descriptor
from vmkeep.storage.partial_files import part_name


def flat_names(target: str) -> tuple[str, str]:
    """(descriptor path, flat extent path) for an export to ``target``."""
    base = target[:-5] if target.lower().endswith(".vmdk") else target
    return base + ".vmdk", base + "-flat.vmdk"


def descriptor_text(flat_name: str, size: int, adapter: str = "lsilogic") -> str:
    sectors = (size + SECTOR - 1) // SECTOR
    return render_descriptor(
        "monolithicFlat",
        [Extent("RW", sectors, "FLAT", flat_name)],
        [
            ("ddb.virtualHWVersion", "4"),
            *geometry(sectors, max_cylinders=16383),
            ("ddb.adapterType", adapter),
        ],
        cid=secrets.token_hex(4),
    )


def write_flat_descriptor(descriptor: str, flat: str, size: int) -> None:
    """Pad ``flat`` to whole sectors and write ``descriptor`` naming it (see module doc)."""
    padded = (size + SECTOR - 1) // SECTOR * SECTOR
    if padded != size:
        os.truncate(flat, padded)
    text = descriptor_text(os.path.basename(flat), size).encode()
    folder = os.path.dirname(os.path.abspath(descriptor))
    tmp = os.path.join(folder, part_name(os.path.basename(descriptor)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, descriptor)
