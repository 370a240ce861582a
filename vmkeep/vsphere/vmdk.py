"""Datastore paths and the small text VMDK descriptor (pure functions, no I/O).

A descriptor+flat VMDK is a text file naming its data extents::

    # Disk DescriptorFile
    version=1
    CID=fffffffe
    parentCID=ffffffff
    createType="vmfs"
    # Extent description
    RW 16777216 VMFS "disk-flat.vmdk"

On vSAN and vVol datastores extents are objects, not files: ``RW 16777216 VMFS
"vsan://52c3…"`` / ``"vvol://<container>/rfc4122.<uuid>"`` (and ``VSANSPARSE "vsan://…"`` for
vSAN snapshot deltas).  Such names are accepted when they are well-formed object URIs
(:data:`OBJECT_URI`) and reported by :attr:`Descriptor.object_backed`: the data is reachable
only through an NFC export lease or hot-add, never ``/folder``.

Sizes are in 512-byte sectors.  We read only flat extents (``FLAT``, ``VMFS``); sparse kinds
(``VMFSSPARSE``, ``SESPARSE``, ``SPARSE``) are reported so the caller can refuse them.  Extent
file names must be plain names in the descriptor's own directory: absolute paths, ``..``,
separators and NUL are refused (:class:`UnsafeDescriptor`) so a hostile descriptor can never
make us open another file on the datastore or the data mover.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from vmkeep.vsphere.errors import UnsafeDescriptor, VSphereError

SECTOR = 512
MAX_DESCRIPTOR = 64 * 1024
FLAT_KINDS = frozenset({"FLAT", "VMFS"})
#: a vSAN / vVol object URI as ESXi writes it in descriptors
OBJECT_URI = re.compile(r"^(?P<scheme>vsan|vvol)://[A-Za-z0-9][A-Za-z0-9._:-]*(?:/[A-Za-z0-9._:-]+)?$")
_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")
_EXTENT = re.compile(
    r'^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<kind>[A-Z]+)'
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+))?)?\s*$'
)


def split_datastore_path(file_name: str) -> tuple[str, str]:
    """``"[ds1] vm/disk.vmdk"`` → ``("ds1", "vm/disk.vmdk")``."""
    m = _DS_PATH.match(file_name.strip())
    if not m:
        raise VSphereError(f"not a datastore path: {file_name!r}")
    return m.group("ds"), m.group("path").lstrip("/")


def join_datastore_path(datastore: str, path: str) -> str:
    return f"[{datastore}] {path}"


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    kind: str
    file: str | None
    offset_sectors: int = 0

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def object_scheme(self) -> str | None:
        """``"vsan"`` / ``"vvol"`` when the extent is a datastore object, else None."""
        m = OBJECT_URI.match(self.file or "")
        return m.group("scheme") if m else None


@dataclass(frozen=True)
class Descriptor:
    create_type: str
    extents: tuple[Extent, ...]
    parent_hint: str | None = None

    @property
    def capacity(self) -> int:
        return sum(e.size for e in self.extents)

    @property
    def object_backed(self) -> str | None:
        """The object scheme (``vsan`` / ``vvol``) when any extent is an object, else None."""
        return next((e.object_scheme for e in self.extents if e.object_scheme), None)

    @property
    def is_flat(self) -> bool:
        return (
            bool(self.extents)
            and all(e.kind in FLAT_KINDS for e in self.extents)
            and not self.object_backed
        )


def looks_like_descriptor(head: bytes) -> bool:
    """True if the first bytes of a file are a text descriptor (not a flat or sparse image)."""
    if head.startswith(b"KDMV") or head.startswith(b"COWD"):
        return False
    sample = head[:4096]
    return b"# Disk DescriptorFile" in sample or b"createType" in sample


def safe_extent_name(name: str, descriptor: str = "descriptor") -> str:
    """Return ``name`` if it is a plain file name; raise :class:`UnsafeDescriptor` otherwise."""
    if (
        not name
        or "\x00" in name
        or "/" in name
        or "\\" in name
        or name in {".", ".."}
        or name.startswith("[")
        or posixpath.isabs(name)
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise UnsafeDescriptor(descriptor, f"extent file name {name!r} is not a plain file name")
    return name


def parse_descriptor(data: bytes, name: str = "descriptor") -> Descriptor:
    """Parse a text descriptor; extent names are checked with :func:`safe_extent_name`."""
    if len(data) > MAX_DESCRIPTOR:
        raise UnsafeDescriptor(name, f"larger than {MAX_DESCRIPTOR} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeDescriptor(name, "not UTF-8 text") from None
    create_type = ""
    parent_hint = None
    extents = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT.match(line)
        if m:
            file = m.group("file")
            if file is not None and not (OBJECT_URI.match(file) and ".." not in file):
                safe_extent_name(file, name)
            extents.append(Extent(
                access=m.group("access"), sectors=int(m.group("sectors")), kind=m.group("kind"),
                file=file, offset_sectors=int(m.group("offset") or 0),
            ))
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip().strip('"')
        if key == "createType":
            create_type = value
        elif key == "parentFileNameHint":
            parent_hint = value
    if not extents:
        raise UnsafeDescriptor(name, "no extents")
    return Descriptor(create_type=create_type, extents=tuple(extents), parent_hint=parent_hint)
