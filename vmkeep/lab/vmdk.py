"""VMFS-style disk files: ``NAME.vmdk`` descriptor plus ``NAME-flat.vmdk`` extent, as ESX stores
a base disk (createType ``vmfs``; ``ddb.thinProvisioned = "1"`` for thin disks, which are sparse
files)."""

from __future__ import annotations

import random
from pathlib import Path

from vmkeep.disks.vmdk.descriptor import Extent, geometry, render_descriptor
from vmkeep.lab.images import copy_sparse


def write_base_disk(descriptor: Path, image: Path, capacity: int, thin: bool, seed: int) -> None:
    """Lay out ``descriptor`` (NAME.vmdk) and its flat extent from a raw image of ``capacity``."""
    rng = random.Random(seed)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    extent = descriptor.with_name(descriptor.stem + "-flat.vmdk")
    copy_sparse(image, extent, capacity, thick=not thin)
    u = " ".join(f"{rng.randrange(256):02x}" for _ in range(15))
    cid = rng.getrandbits(32) | 1
    sectors = capacity // 512
    descriptor.write_text(
        render_descriptor(
            "vmfs",
            [Extent("RW", sectors, "VMFS", extent.name)],
            [
                ("ddb.adapterType", "lsilogic"),
                *geometry(sectors, max_cylinders=None),
                ("ddb.longContentID", f"{rng.getrandbits(128):032x}"),
                ("ddb.thinProvisioned", "1" if thin else "0"),
                ("ddb.uuid", f"60 00 C2 9{u[1:]}"),
                ("ddb.virtualHWVersion", "14"),
            ],
            cid=f"{cid:08x}",
            settings=[("encoding", "UTF-8")],
        )
    )
