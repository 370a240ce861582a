"""Read a snapshot's virtual disk as a seekable, read-only binary file.

Transports (uniform entry point :func:`open_disk`):

* ``https`` — datastore ``/folder/<path>?dcPath=&dsName=`` Range GETs through the vSphere
  endpoint with the session cookie and TLS settings (Veeam's "NBD"-like path over the LAN);
* ``direct`` — the datastore is mounted on the data mover (NFS, VMFS via vmfs6-tools, SAN):
  ``datastore_mounts`` maps datastore name → local directory and the flat extent is read with
  ``pread`` (LAN-free).

``https`` on a real vCenter (``host=`` given, the :class:`~.hosts.HostEndpoint` running the VM
or owning the files): every request goes to that ESXi host directly, at the datacenter's full
inventory path (``VMInfo.datacenter``, e.g. ``Region/DC1``), authenticated by a one-time generic
service ticket (``SessionManager.AcquireGenericServiceTicket`` for exactly that URL and method,
sent as cookie ``vmware_cgi_ticket``), verified against the host's own certificate, with at most
:data:`~.hosts.MAX_PER_HOST` requests in flight per host.  When the host cannot be reached at
open time the disk is read through vCenter instead and a sentence saying so is appended to
``warnings``.  ``busy_files`` (the running VM's current disk files) are refused with
:class:`DiskBusy`: the running host is writing them.

Both read the *flat* extents named by the disk's text descriptor
(:mod:`vmkeep.disks.vmdk.descriptor`; absolute/``..`` extent names are refused).  A backing that is
itself a snapshot delta (the VM had a snapshot before ours: ``VMFSSPARSE`` or ``SESPARSE`` extents)
is read through :mod:`vmkeep.disks.vmdk.deltas` as the composed point-in-time disk — newest layer
holding a grain wins, else its parent, down to the flat base — over the same transport; hostile
chains raise :class:`~vmkeep.disks.errors.UnsafeDescriptorError`, formats we do not read
:class:`UnsupportedDisk`.  Such a reader's ``chain`` attribute is the
:class:`~vmkeep.disks.vmdk.deltas.DeltaChain` (``chain.allocated(depth)``: what the newest deltas
hold); it is ``None`` for flat disks.  :func:`open_datastore_file` still gives the raw files byte
for byte.

The returned :class:`ExtentReader` is a ``io.RawIOBase``: ``read``, ``readinto``, ``seek``,
``tell``, ``size``; reads past the end return ``b""``.  :meth:`ExtentReader.read_extents` keeps up
to ``parallel`` range requests in flight and yields ``(offset, bytes)`` in order — the data path
uses it with CBT areas.  Every read is idempotent; retries live in :mod:`.httpclient`.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from vmkeep.disks.errors import UnsafeDescriptorError, UnsupportedDiskFormat
from vmkeep.disks.vmdk.deltas import DeltaChain, open_chain
from vmkeep.disks.vmdk.descriptor import (
    MAX_DESCRIPTOR,
    Descriptor,
    looks_like_descriptor,
    parse_descriptor,
)
from vmkeep.storage.disk_source import ByteSource
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import (
    DiskBusy,
    HostUnreachable,
    NotFound,
    ObjectBackedDisk,
    UnsupportedDisk,
)
from vmkeep.vsphere.hosts import HostEndpoint
from vmkeep.vsphere.httpclient import HTTPClient, folder_url
from vmkeep.vsphere.inventory import VirtualDisk

Transport = Literal["https", "direct"]
#: what a backup may ask for: a transport, or ``auto`` (chosen per disk, :func:`choose`)
TransportChoice = Literal["auto", "https", "direct", "nfc"]
BLOCK = 4 * 1024 * 1024


class HTTPSource:
    def __init__(self, client: HTTPClient, url: str) -> None:
        self.client, self.url = client, url

    def pread(self, offset: int, length: int) -> bytes:
        return self.client.get_range(self.url, offset, length)


class HostSource(HTTPSource):
    """A datastore file read from one ESXi host with a fresh service ticket per request."""

    def __init__(self, client: HTTPClient, host: HostEndpoint, url: str) -> None:
        super().__init__(client, host.url(url))
        self.host = host
        self._context = host.ssl_context()

    def _ticket(self, method: str) -> Callable[[], str]:
        def cookie() -> str:
            return "vmware_cgi_ticket=" + acquire_ticket(self.client.session, self.url, method)

        return cookie

    def pread(self, offset: int, length: int) -> bytes:
        return self.client.get_range(
            self.url, offset, length, context=self._context, auth=self._ticket("GET"), slot=True
        )

    def size(self, retries: int | None = None) -> int:
        return self.client.head_size(
            self.url, context=self._context, auth=self._ticket("HEAD"), slot=True,
            retries=retries,
        )


def acquire_ticket(session: Session, url: str, method: str) -> str:
    """A one-time generic service ticket for ``method url`` (``vmware_cgi_ticket`` value)."""
    from pyVmomi import vim

    spec = vim.SessionManager.HttpServiceRequestSpec(method=f"http{method.title()}", url=url)
    ticket = session.call(
        session.content.sessionManager.AcquireGenericServiceTicket, spec, idempotent=True,
        what="AcquireGenericServiceTicket",
    )
    return str(ticket.id)


class LocalSource:
    """A local file or device as a :class:`~vmkeep.storage.disk_source.ByteSource`; reads past
    its end (the sparse tail of a short file) are zeros."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def pread(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            chunk = os.pread(self.fd, length, offset)
            if not chunk:  # sparse tail of a short file reads as zeros
                parts.append(bytes(length))
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class _Piece:
    start: int  # logical offset of this extent
    size: int
    source: ByteSource
    file_offset: int


class ExtentReader(io.RawIOBase):
    """Seekable read-only view of a disk made of flat extents (see module docstring); a
    :class:`~vmkeep.storage.disk_source.DiskReader`."""

    random_access = True

    chain: DeltaChain | None = None  # set by open_disk when the disk is a delta chain

    def __init__(self, name: str, pieces: list[_Piece], *, parallel: int = 4) -> None:
        super().__init__()
        self.name = name
        self._pieces = pieces
        self.size = sum(p.size for p in pieces)
        self._pos = 0
        self.parallel = max(1, parallel)
        self._pool: ThreadPoolExecutor | None = None  # one per reader: keeps connections warm

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (clipped to the disk), across extent boundaries."""
        length = max(0, min(length, self.size - offset))
        out = []
        for piece in self._pieces:
            if length <= 0:
                break
            end = piece.start + piece.size
            if offset >= end or offset < piece.start:
                continue
            n = min(length, end - offset)
            out.append(piece.source.pread(piece.file_offset + offset - piece.start, n))
            offset += n
            length -= n
        return b"".join(out)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest when negative) in one ranged request per extent."""
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read_extents(
        self, extents: Iterable[tuple[int, int]], *, block: int = BLOCK
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, data)`` for each ``block``-sized piece of ``extents``, in order, with
        up to ``parallel`` requests in flight (bounded memory: parallel × block)."""
        pieces = (
            (off + i, min(block, length - i))
            for off, length in extents
            for i in range(0, length, block)
        )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="disk-read")
        window: deque[tuple[int, Future[bytes]]] = deque()
        try:
            for off, n in pieces:
                window.append((off, self._pool.submit(self.pread, off, n)))
                if len(window) >= self.parallel:
                    first_off, fut = window.popleft()
                    yield first_off, fut.result()
            while window:
                first_off, fut = window.popleft()
                yield first_off, fut.result()
        finally:
            for _, fut in window:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for piece in self._pieces:
            closer = getattr(piece.source, "close", None)
            if closer is not None:
                closer()
        super().close()



def _local_path(mounts: Mapping[str, str], datastore: str, path: str) -> str:
    root = mounts.get(datastore)
    if root is None:
        raise UnsupportedDisk(path, f"datastore {datastore!r} is not mounted on this data mover")
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, path.lstrip("/")))
    if os.path.commonpath([real_root, full]) != real_root:
        raise UnsafeDescriptorError(path, "resolves outside the datastore mount")
    return full


def open_disk(
    session: Session | None,
    disk: VirtualDisk,
    transport: Transport = "https",
    *,
    datacenter: str | None = None,
    datastore_mounts: Mapping[str, str] | None = None,
    client: HTTPClient | None = None,
    parallel: int = 4,
    host: HostEndpoint | None = None,
    warnings: list[str] | None = None,
    busy_files: Iterable[str] = (),
) -> ExtentReader:
    """Open the snapshot disk ``disk`` (from the snapshot's config) for reading.

    ``https`` needs ``session`` and ``datacenter`` (``VMInfo.datacenter``: the datacenter's
    inventory path); ``host`` reads from that ESXi host (see the module docstring), ``warnings``
    receives the vCenter fallback notice.  ``direct`` needs ``datastore_mounts``.  The
    descriptor's capacity must equal ``disk.capacity``.
    """
    if disk.file_name in set(busy_files):
        raise DiskBusy(disk.file_name, "it is the running VM's current disk, which its host is "
                       "writing; read the snapshot's disk instead")
    datastore, path = split_datastore_path(disk.file_name)
    directory = posixpath.dirname(path)
    http = client or (HTTPClient(session) if session is not None else None)  # one per disk
    if transport == "https" and host is not None and http is not None and datacenter is not None:
        try:  # one probe: can this mover reach the host?
            HostSource(http, host, folder_url(datacenter, datastore, path)).size(retries=1)
        except HostUnreachable as exc:
            note = (f"ESXi host {host.label} is unreachable ({exc.get_message()}); "
                    f"reading {disk.file_name} through vCenter (slower, and files the running "
                    f"host holds open cannot be read there)")
            if warnings is not None:
                warnings.append(note)
            host = None

    def source(rel: str) -> ByteSource:
        if transport == "direct":
            local = _local_path(datastore_mounts or {}, datastore, rel)
            try:
                return LocalSource(local)
            except FileNotFoundError:
                raise NotFound(f"[{datastore}] {rel}") from None
        if http is None or datacenter is None:
            raise UnsupportedDisk(disk.file_name, "https transport needs a session and datacenter")
        if host is not None:
            return HostSource(http, host, folder_url(datacenter, datastore, rel))
        return HTTPSource(http, folder_url(datacenter, datastore, rel))

    head_src = source(path)
    head = _head(head_src, disk)
    if not looks_like_descriptor(head):
        whole = [_Piece(0, disk.capacity, head_src, 0)]
        return ExtentReader(disk.file_name, whole, parallel=parallel)
    if isinstance(head_src, LocalSource):
        head_src.close()
    descriptor = parse_descriptor(head.rstrip(b"\x00"), disk.file_name)
    if descriptor.object_backed:  # vSAN / vVol: only NFC (vmkeep.vsphere.nfc) or hot-add
        raise ObjectBackedDisk(disk.file_name, descriptor.object_backed)
    if descriptor.is_flat:
        if descriptor.capacity != disk.capacity:
            raise UnsafeDescriptorError(disk.file_name, f"describes {descriptor.capacity} bytes, "
                                        f"vSphere says {disk.capacity}")
        return ExtentReader(disk.file_name, _flat_pieces(descriptor, directory, source),
                            parallel=parallel)

    # A snapshot delta (the VM has a snapshot of its own): compose the chain
    # (vmkeep.disks.vmdk.deltas).
    def open_file(rel: str) -> tuple[ByteSource, int]:
        src = source(rel)
        return src, _size(src)

    def open_flat(base: Descriptor) -> ExtentReader:
        return ExtentReader(disk.file_name, _flat_pieces(base, directory, source))

    try:
        chain = open_chain(disk.file_name, path, head, disk.capacity, open_file, open_flat)
    except UnsupportedDiskFormat as exc:
        raise UnsupportedDisk(*exc.args) from None
    reader = ExtentReader(disk.file_name, [_Piece(0, disk.capacity, chain, 0)], parallel=parallel)
    reader.chain = chain
    return reader


def _flat_pieces(
    descriptor: Descriptor, directory: str, source: Callable[[str], ByteSource]
) -> list[_Piece]:
    """The flat extents of ``descriptor`` (names already checked bare) as consecutive pieces."""
    pieces, start = [], 0
    for extent in descriptor.extents:
        assert extent.file is not None
        rel = posixpath.join(directory, extent.file)
        pieces.append(_Piece(start, extent.size, source(rel), extent.offset_sectors * 512))
        start += extent.size
    return pieces


def _size(src: ByteSource) -> int:
    """The size in bytes of a source's file (``fstat`` or ``HEAD``)."""
    if isinstance(src, LocalSource):
        return os.fstat(src.fd).st_size
    if isinstance(src, HostSource):
        return src.size()
    assert isinstance(src, HTTPSource)
    return src.client.head_size(src.url)


def _head(src: ByteSource, disk: VirtualDisk) -> bytes:
    """The first bytes of the disk's file: enough for a descriptor, never past a small file."""
    size = _size(src)
    return src.pread(0, min(size, MAX_DESCRIPTOR)) if size else b""


def open_datastore_file(
    session: Session | None,
    file_name: str,
    transport: Transport = "https",
    *,
    datacenter: str | None = None,
    datastore_mounts: Mapping[str, str] | None = None,
    client: HTTPClient | None = None,
    parallel: int = 4,
    host: HostEndpoint | None = None,
) -> ExtentReader:
    """Any datastore file (``"[ds] dir/name"``) as a seekable read-only file, byte for byte.

    For callers that parse VMDK chains themselves (e.g. :mod:`vmkeep.disks` opening a sparse
    snapshot delta and its parents): hand them this as the file opener.  ``host``: read from
    that ESXi host with service tickets (as :func:`open_disk`).
    """
    datastore, path = split_datastore_path(file_name)
    if transport == "direct":
        local = LocalSource(_local_path(datastore_mounts or {}, datastore, path))
        size = os.fstat(local.fd).st_size
        return ExtentReader(file_name, [_Piece(0, size, local, 0)], parallel=parallel)
    if session is None or datacenter is None:
        raise UnsupportedDisk(file_name, "https transport needs a session and datacenter")
    http = client or HTTPClient(session)
    src: HTTPSource
    if host is not None:
        src = HostSource(http, host, folder_url(datacenter, datastore, path))
    else:
        src = HTTPSource(http, folder_url(datacenter, datastore, path))
    size = _size(src)
    return ExtentReader(file_name, [_Piece(0, size, src, 0)], parallel=parallel)
