"""The VMDK text descriptor: parse and validate (untrusted input), and write.

A descriptor names a virtual disk's data extents; ESX stores it as ``NAME.vmdk`` beside the
data (``NAME-flat.vmdk``), hosted sparse and streamOptimized VMDKs embed it after their header::

    # Disk DescriptorFile
    version=1
    CID=fffffffe
    parentCID=ffffffff
    createType="vmfs"
    # Extent description
    RW 16777216 VMFS "disk-flat.vmdk"
    # The Disk Data Base
    #DDB
    ddb.adapterType = "lsilogic"

Format (VMware "Virtual Disk Format 5.0", §"The Descriptor File"): UTF-8 lines; ``#`` starts a
comment; ``key = value`` settings (values optionally double-quoted; ``ddb.*`` keys form the disk
database); extent lines ``<access> <sectors> <KIND> ["<file>" [<offset sectors>
[<partition uuid> [<device>]]]]`` with access ``RW``, ``RDONLY`` or ``NOACCESS``.  Sizes are
512-byte sectors.  Kinds seen: ``FLAT``/``VMFS`` (raw data), ``SPARSE`` (hosted ``KDMV``),
``VMFSSPARSE`` (COWD delta), ``SESPARSE``, ``VSANSPARSE``, ``ZERO``, ``VMFSRDM``/``VMFSRAW``.
On vSAN and vVol datastores an extent is an object: ``"vsan://52c3…"`` /
``"vvol://<container>/rfc4122.<uuid>"`` (:data:`OBJECT_URI`), reachable only through an NFC
export lease or hot-add, never as a file.

Contract of :func:`parse_descriptor` (everything here is untrusted):

- at most :data:`MAX_DESCRIPTOR` bytes of UTF-8 without NUL bytes in its lines, else
  :class:`UnsafeDescriptorError`.  The text ends at a NUL after a complete line, as C readers
  (qemu, VMware) read it: trailing NUL padding (embedded descriptors), and what qemu-img leaves
  when it rewrites a descriptor shorter than before (the new text, a NUL, the old text's last
  bytes: seen when its random CID came out shorter) — what follows is ignored, never parsed;
- every line starting with an access keyword must be a well-formed extent line
  (:class:`DiskFormatError` otherwise), there is at least one and at most :data:`MAX_EXTENTS`;
- every extent file name (and :meth:`Descriptor.check_parent_hint`) must be a bare name in the
  descriptor's own folder (:func:`check_extent_name`: no separators, no ``..``, not absolute, no
  drive letter, no ``[datastore]``, no NUL, at most 255 bytes), or a well-formed object URI;
  anything else is :class:`UnsafeDescriptorError` — so a hostile descriptor can never make us
  open another file on a datastore, a data mover or the backup host.

Policies are the caller's: :meth:`Descriptor.check_base` refuses what a reader of a *base*
image must not open (a parent, snapshot-delta and raw-device extents); the vSphere delta-chain
reader accepts deltas and walks parents itself.

:func:`render_descriptor` writes a descriptor; every writer in vmkeep (the streamOptimized
writer of VM restores, the monolithicFlat export, the lab's VMFS disks) goes through it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vmkeep.disks.errors import DiskFormatError, ParentDiskRefused, UnsafeDescriptorError

SECTOR = 512
MAX_DESCRIPTOR = 64 * 1024
MAX_EXTENTS = 4096
MAX_NAME = 255
#: the first line of every descriptor (compared case-insensitively by :func:`looks_like_descriptor`)
HEADER_LINE = "# Disk DescriptorFile"
#: ``parentCID`` of a disk without a parent
NO_PARENT = "ffffffff"
FLAT_KINDS = frozenset({"FLAT", "VMFS"})
#: extent kinds a reader of a base image opens
BASE_KINDS = FLAT_KINDS | {"SPARSE", "ZERO"}
#: extent kinds a reader of a base image refuses, and why
REFUSED_BASE_KINDS = {
    "VMFSSPARSE": "vmfsSparse (snapshot delta) extents are not opened",
    "SESPARSE": "seSparse (snapshot delta) extents are not opened",
    "VSANSPARSE": "vsanSparse (snapshot delta) extents are not opened",
    "VMFSRDM": "raw device mappings are not opened",
    "VMFSRAW": "raw device extents are not opened",
}
#: a vSAN / vVol object URI as ESXi writes it in descriptors
OBJECT_URI = re.compile(
    r"^(?P<scheme>vsan|vvol)://[A-Za-z0-9][A-Za-z0-9._:-]*(?:/[A-Za-z0-9._:-]+)?$"
)
_ACCESS = ("RW ", "RDONLY ", "NOACCESS ")
_EXTENT = re.compile(
    r'^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<kind>[A-Z]+)'
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+)(?:\s+\S+){0,2})?)?\s*$'
)
_HEX = re.compile(r"^[0-9A-Fa-f]+$")


@dataclass(frozen=True)
class Extent:
    """One extent line; ``file`` is ``None`` for ``ZERO`` extents."""

    access: str
    sectors: int
    kind: str
    file: str | None
    offset_sectors: int = 0

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def offset(self) -> int:
        """Byte offset of the extent's data inside its file (flat extents)."""
        return self.offset_sectors * SECTOR

    @property
    def object_scheme(self) -> str | None:
        """``"vsan"`` / ``"vvol"`` when the extent is a datastore object, else None."""
        m = OBJECT_URI.match(self.file or "")
        return m.group("scheme") if m else None

    def line(self) -> str:
        """The extent line as :func:`render_descriptor` writes it."""
        out = f"{self.access} {self.sectors} {self.kind}"
        if self.file is not None:
            out += f' "{self.file}"'
            if self.offset_sectors or self.kind == "FLAT":  # as VMware writes them
                out += f" {self.offset_sectors}"
        return out


@dataclass(frozen=True)
class Descriptor:
    """A parsed descriptor: ``settings`` are the non-``ddb.`` keys, ``ddb`` the disk database
    (values unquoted, as written)."""

    create_type: str
    extents: tuple[Extent, ...]
    settings: Mapping[str, str] = field(default_factory=dict)
    ddb: Mapping[str, str] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return sum(e.size for e in self.extents)

    @property
    def parent_hint(self) -> str | None:
        """``parentFileNameHint`` (unchecked: see :meth:`check_parent_hint`), or None."""
        return self.settings.get("parentFileNameHint")

    @property
    def cid(self) -> str | None:
        """``CID`` in lower-case hex, ``None`` when absent or not hex."""
        return _hex(self.settings.get("CID"))

    @property
    def parent_cid(self) -> str | None:
        """``parentCID`` in lower-case hex, ``None`` when absent or not hex."""
        return _hex(self.settings.get("parentCID"))

    @property
    def parent(self) -> str | None:
        """The parent this descriptor names, or ``None`` for a base disk (see :func:`parent_of`)."""
        return parent_of(self.settings)

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

    def check_parent_hint(self, name: str) -> str | None:
        """The parent hint if it is a bare name (:func:`check_extent_name`), or None."""
        hint = self.parent_hint
        return None if hint is None else check_extent_name(name, hint)

    def check_base(self, name: str) -> Descriptor:
        """Refuse what a reader of a base image must not open: a parent
        (:class:`ParentDiskRefused`), delta / raw-device / object extents and extents without a
        file (:class:`UnsafeDescriptorError`).  Returns ``self``."""
        parent = self.parent
        if parent is not None:
            raise ParentDiskRefused(name, parent)
        for extent in self.extents:
            if extent.kind in REFUSED_BASE_KINDS:
                raise UnsafeDescriptorError(name, REFUSED_BASE_KINDS[extent.kind])
            if extent.kind not in BASE_KINDS:
                raise DiskFormatError(name, f"unsupported extent kind {extent.kind}")
            if extent.kind == "ZERO":
                continue
            if extent.object_scheme:
                raise UnsafeDescriptorError(name, f"extent {extent.file!r} is a datastore object")
            check_extent_name(name, extent.file)
        return self


def _hex(value: str | None) -> str | None:
    return value.lower() if value and _HEX.match(value) else None


def parent_of(settings: Mapping[str, str]) -> str | None:
    """The parent a descriptor's settings name (``parentFileNameHint``, else ``parentCID=…``
    when it is not ``ffffffff``), or ``None`` for a base disk."""
    cid = settings.get("parentCID", NO_PARENT).strip().lower()
    hint = settings.get("parentFileNameHint", "").strip()
    if cid != NO_PARENT or hint:
        return hint or f"parentCID={cid}"
    return None


def looks_like_descriptor(head: bytes) -> bool:
    """True if the first bytes of a file are a text descriptor (not a flat or sparse image)."""
    if head.startswith((b"KDMV", b"COWD")):
        return False
    sample = head[:4096]
    return b"# Disk DescriptorFile" in sample or b"createType" in sample


def check_extent_name(descriptor: str, filename: str | None) -> str:
    """Return ``filename`` if it is a bare file name; else raise :class:`UnsafeDescriptorError`."""
    if not filename:
        raise UnsafeDescriptorError(descriptor, "extent without a file name")
    bad = None
    if "\0" in filename:
        bad = "contains NUL"
    elif filename.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", filename):
        bad = "is absolute"
    elif "/" in filename or "\\" in filename:
        bad = "contains a path separator"
    elif filename in (".", ".."):
        bad = "is a relative directory reference"
    elif filename.startswith("["):
        bad = "names a datastore"
    elif len(filename.encode("utf-8", "surrogateescape")) > MAX_NAME:
        bad = "is too long"
    if bad is not None:
        raise UnsafeDescriptorError(
            descriptor, f"extent file name {filename!r} is not a plain file name: it {bad}"
        )
    return filename


def parse_descriptor(data: bytes, name: str = "descriptor") -> Descriptor:
    """Parse and validate a text descriptor (see the module docstring)."""
    data = data.rstrip(b"\0")
    if len(data) > MAX_DESCRIPTOR:
        raise UnsafeDescriptorError(name, f"larger than {MAX_DESCRIPTOR} bytes")
    text_part, nul, _leftover = data.partition(b"\0")
    if nul and not text_part.endswith(b"\n"):
        raise UnsafeDescriptorError(name, "NUL byte in the descriptor text")
    data = text_part  # after a NUL that ends the text: an older, longer text's tail
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeDescriptorError(name, "not UTF-8 text") from None
    settings: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[Extent] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(_ACCESS):
            extents.append(_extent(line, name))
            if len(extents) > MAX_EXTENTS:
                raise DiskFormatError(name, f"more than {MAX_EXTENTS} extents")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip().strip('"')
        (ddb if key.startswith("ddb.") else settings)[key] = value
    if not extents:
        raise UnsafeDescriptorError(name, "no extents")
    return Descriptor(settings.get("createType", ""), tuple(extents), settings, ddb)


def _extent(line: str, name: str) -> Extent:
    m = _EXTENT.match(line)
    if not m:
        raise DiskFormatError(name, f"malformed extent line {line!r}")
    file = m.group("file")
    if file is not None and not (OBJECT_URI.match(file) and ".." not in file):
        check_extent_name(name, file)
    return Extent(
        access=m.group("access"), sectors=int(m.group("sectors")), kind=m.group("kind"),
        file=file, offset_sectors=int(m.group("offset") or 0),
    )


def render_descriptor(
    create_type: str,
    extents: Iterable[Extent],
    ddb: Iterable[tuple[str, str]],
    *,
    cid: str = "fffffffe",
    settings: Iterable[tuple[str, str]] = (),
    extent_header: str = "# Extent description",
) -> str:
    """A descriptor's text: header, ``version=1``, ``settings`` (e.g. ``encoding``), ``CID``,
    ``parentCID=ffffffff`` (vmkeep writes base disks only), ``createType``, the extents, the
    disk database in the given order.  Values are written quoted where VMware quotes them; a
    ``"`` inside a value or file name is dropped."""
    lines = [HEADER_LINE, "version=1"]
    lines += [f'{k}="{_clean(v)}"' for k, v in settings]
    lines += [f"CID={cid}", f"parentCID={NO_PARENT}", f'createType="{_clean(create_type)}"', ""]
    lines.append(extent_header)
    for e in extents:
        file = None if e.file is None else _clean(e.file)
        lines.append(Extent(e.access, e.sectors, e.kind, file, e.offset_sectors).line())
    lines += ["", "# The Disk Data Base", "#DDB", ""]
    lines += [f'{k} = "{_clean(v)}"' for k, v in ddb]
    return "\n".join(lines) + "\n"


def _clean(value: str) -> str:
    return value.replace('"', "")


def geometry(sectors: int, *, max_cylinders: int | None = 65535) -> list[tuple[str, str]]:
    """The ``ddb.geometry.*`` entries VMware writes for a SCSI disk: 255 heads, 63 sectors per
    track, cylinders clamped to ``[1, max_cylinders]`` (unclamped above when None)."""
    cylinders = max(1, sectors // (255 * 63))
    if max_cylinders is not None:
        cylinders = min(cylinders, max_cylinders)
    return [
        ("ddb.geometry.cylinders", str(cylinders)),
        ("ddb.geometry.heads", "255"),
        ("ddb.geometry.sectors", "63"),
    ]
