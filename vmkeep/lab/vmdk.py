"""VMFS-style disk files: ``NAME.vmdk`` descriptor plus ``NAME-flat.vmdk`` extent, as ESX stores
a base disk (createType ``vmfs``; ``ddb.thinProvisioned = "1"`` for thin disks, which are sparse
files)."""

from __future__ import annotations

import random
from pathlib import Path

from vmkeep.lab.images import copy_sparse

DESCRIPTOR = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID={cid:08x}
parentCID=ffffffff
createType="vmfs"

# Extent description
RW {sectors} VMFS "{extent}"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "{cyl}"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "{long:032x}"
ddb.thinProvisioned = "{thin}"
ddb.uuid = "60 00 C2 9{u}"
ddb.virtualHWVersion = "14"
"""


def write_base_disk(descriptor: Path, image: Path, capacity: int, thin: bool, seed: int) -> None:
    """Lay out ``descriptor`` (NAME.vmdk) and its flat extent from a raw image of ``capacity``."""
    rng = random.Random(seed)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    extent = descriptor.with_name(descriptor.stem + "-flat.vmdk")
    copy_sparse(image, extent, capacity, thick=not thin)
    u = " ".join(f"{rng.randrange(256):02x}" for _ in range(15))
    descriptor.write_text(
        DESCRIPTOR.format(
            cid=rng.getrandbits(32) | 1,
            sectors=capacity // 512,
            extent=extent.name,
            cyl=max(1, capacity // (255 * 63 * 512)),
            long=rng.getrandbits(128),
            thin=1 if thin else 0,
            u=u[1:],
        )
    )
