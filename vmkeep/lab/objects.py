"""vSAN and vVol datastores of the lab: disks are objects, not files.

On a real vSAN or vVol datastore a disk's descriptor (``NAME.vmdk`` in the VM's namespace folder)
names its data as an object — ``RW 32768 VMFS "vsan://52c3…"`` or
``RW 32768 VMFS "vvol://<container>/rfc4122.<uuid>"`` — and there is no ``NAME-flat.vmdk`` to
download through ``/folder`` (404).  :func:`to_object` turns a base disk laid out by
:func:`vmkeep.lab.vmdk.write_base_disk` into that shape: the flat extent moves to the lab's
object store (``object_dir``, outside the datastore directory, named by the URI's last
component — the Go lab's ``vsan.go`` maps URIs the same way) and the descriptor's extent line
names the object.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from pathlib import Path

from vmkeep.disks.vmdk.descriptor import parse_descriptor, render_descriptor

#: datastore type (``summary.type``) → URI scheme of its objects
SCHEMES = {"vsan": "vsan", "VVOL": "vvol"}
#: the lab's vVol storage container (one per datastore on a real array)
VVOL_CONTAINER = "vvol:5a1b2c3d4e5f6071-8293a4b5c6d7e8f9"


def object_uri(ds_type: str, seed: int) -> str:
    """A deterministic object URI for a disk on a datastore of ``ds_type``."""
    u = uuid.UUID(int=random.Random(seed).getrandbits(128), version=4)
    if SCHEMES[ds_type] == "vvol":
        return f"vvol://{VVOL_CONTAINER.split(':', 1)[1]}/rfc4122.{u}"
    return f"vsan://{u}"


def object_file(object_dir: Path, uri: str) -> Path:
    """Where the lab keeps the bytes of object ``uri``."""
    return object_dir / uri.rsplit("/", 1)[-1]


def to_object(descriptor: Path, object_dir: Path, ds_type: str, seed: int) -> str:
    """Move ``descriptor``'s flat extent into ``object_dir``; rewrite the extent line; return
    the object URI."""
    flat = descriptor.with_name(descriptor.stem + "-flat.vmdk")
    uri = object_uri(ds_type, seed)
    object_dir.mkdir(parents=True, exist_ok=True)
    flat.replace(object_file(object_dir, uri))
    desc = parse_descriptor(descriptor.read_bytes(), str(descriptor))
    first, *rest = desc.extents
    kept = ("version", "CID", "parentCID", "createType")
    descriptor.write_text(
        render_descriptor(
            desc.create_type,
            [dataclasses.replace(first, file=uri), *rest],
            desc.ddb.items(),
            cid=desc.settings["CID"],
            settings=[(k, v) for k, v in desc.settings.items() if k not in kept],
        )
    )
    return uri
