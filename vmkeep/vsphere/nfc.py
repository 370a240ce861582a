"""The ``nfc`` transport: a snapshot's disks through an NFC export lease.

``VirtualMachineSnapshot.ExportSnapshot`` (``VirtualMachine.ExportVm`` for templates, which never
run) returns an ``HttpNfcLease``; once it is ``ready`` each disk is one device URL that streams the
disk as a streamOptimized VMDK (:mod:`vmkeep.disks.vmdk.stream_optimized`), sequentially, once.
This works on every datastore type — vSAN and vVol disks, which have no flat file, and VMFS/NFS when
``/folder`` access is refused — at the price of reading every disk's whole stream.

Contract:

* :meth:`NfcExport.open` starts the lease and waits (bounded) until it is ready;
  :meth:`NfcExport.source` gives one :class:`NfcDiskSource` per disk (by device key).
* While the lease is open a daemon thread calls ``HttpNfcLeaseProgress`` every
  ``leaseTimeout / 4`` seconds (at most 60), so the lease never idles out however slowly the
  repository writes; progress is the share of the disks' bytes delivered so far.  Progress is
  also reported when a disk starts and ends.
* :meth:`NfcExport.close` releases the lease exactly once: ``HttpNfcLeaseComplete`` when every
  source that was opened reached its end-of-stream marker, ``HttpNfcLeaseAbort`` otherwise
  (failure, interruption).  The export closes itself when its last source is closed, so callers
  that close their readers (always, in a ``finally``) always release the lease.
* :class:`NfcDiskSource` is a read-only disk for :func:`vmkeep.storage.disk_backup.backup_disk`:
  ``pread(offset, length)`` is thread-safe and answers in any order *within a sliding window*:
  the stream is decoded forward until the request is covered; decoded grains wait in memory only
  until read (so memory stays bounded by the consumer's in-flight window, never the disk size).
  :meth:`NfcDiskSource.plan_reads` names the extents the consumer will read (CBT changes,
  allocated areas): other grains are skipped without being inflated, and a read outside the plan
  raises instead of inventing zeros.  :meth:`NfcDiskSource.finish` reads the rest of the stream
  to its end-of-stream marker (the disk is only good when the whole stream was).
* Errors: the lease ending early (aborted, timed out: ``HttpNfcLeaseProgress`` faults, or the
  stream dropping) → :class:`NfcLeaseError` / :class:`NfcError`; a hostile or corrupt stream →
  :class:`~vmkeep.disks.vmdk.stream_optimized.StreamFormatError` (exit 14).  Nothing is retried
  here: a stream cannot resume, so the caller's retry re-runs the disk on a new lease.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from vmkeep.disks.vmdk.stream_optimized import StreamFormatError, StreamReader
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import NfcError, NfcLeaseError, VSphereError
from vmkeep.vsphere.hosts import url_and_tls
from vmkeep.vsphere.httpclient import TRANSFER_ERRORS, https_pool
from vmkeep.vsphere.inventory import VirtualDisk, disks_from_devices

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0
#: HTTP read timeout of a device URL stream (hostd sends nothing while it reads a slow disk)
STREAM_TIMEOUT = 300.0


def device_slot(device: Any, controllers: dict[int, Any]) -> str:
    """``VirtualLsiLogicController0:1``: how lease device keys name a disk (controller class,
    bus number, unit number)."""
    controller = controllers.get(device.controllerKey)
    if controller is None:
        return f"VirtualDisk{device.controllerKey}:{device.unitNumber or 0}"
    cls = type(controller).__name__.rsplit(".", 1)[-1]
    return f"{cls}{controller.busNumber}:{device.unitNumber or 0}"


class NfcExport:
    """One export lease and its keep-alive (see the module docstring)."""

    def __init__(self, session: Session, lease: Any, label: str, urls: dict[int, str],
                 capacities: dict[int, int], timeout_s: int) -> None:
        self.session, self.lease, self.label = session, lease, label
        self.urls, self.capacities = urls, capacities
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._sources: dict[int, NfcDiskSource] = {}
        self._open = 0
        self._failed = False
        self._closed = False
        self._stop = threading.Event()
        self.progress_error: VSphereError | None = None
        self._keeper = threading.Thread(target=self._keep_alive, name="nfc-lease", daemon=True)
        self._keeper.start()

    # -- life -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, session: Session, entity: Any, label: str, *, snapshot: bool = True,
             ready_timeout: float = READY_TIMEOUT) -> NfcExport:
        """ExportSnapshot (``snapshot``) or ExportVm on ``entity``; wait until ready."""
        export = entity.ExportSnapshot if snapshot else entity.ExportVm
        lease = session.call(export, what=f"export {label}")
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                state = session.get(lease, "state")
                if state == "ready":
                    break
                if state == "error" or state == "done":
                    raise NfcLeaseError(label, _lease_fault(session, lease) or state)
                if time.monotonic() > deadline:
                    raise NfcLeaseError(label, f"not ready after {ready_timeout:.0f}s")
                time.sleep(0.2)
            info = session.get(lease, "info")
            devices = session.get(entity, "config.hardware.device") or []
            urls, capacities = _map_urls(info, devices, session, label)
        except BaseException:
            with contextlib.suppress(Exception):
                session.call(lease.HttpNfcLeaseAbort, what="abort NFC lease")
            raise
        log.info("NFC export lease for %s is ready (%d disks)", label, len(urls))
        return cls(session, lease, label, urls, capacities, int(info.leaseTimeout or 300))

    def source(self, disk: VirtualDisk) -> NfcDiskSource:
        """The stream of ``disk`` (by device key) as a :class:`NfcDiskSource`."""
        url = self.urls.get(disk.key)
        if url is None:
            raise NfcError(self.label, f"the lease has no device URL for disk {disk.key} "
                           f"({disk.file_name})")
        with self._lock:
            src = NfcDiskSource(self, disk, url)
            self._sources[disk.key] = src
            self._open += 1
        return src

    def _closed_source(self, src: NfcDiskSource) -> None:
        with self._lock:
            self._open -= 1
            if not src.finished:
                self._failed = True
            last = self._open == 0
        if last:
            self.close()

    def fail(self) -> None:
        """Mark the export failed: the lease is aborted, not completed, when it closes."""
        self._failed = True

    def close(self) -> None:
        """Complete (every opened disk read to its end) or abort the lease; once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ok = not self._failed and all(s.finished for s in self._sources.values())
        self._stop.set()
        if ok:
            try:
                self._progress(100)
                self.session.call(self.lease.HttpNfcLeaseComplete, what="complete NFC lease")
                log.info("NFC export lease for %s completed", self.label)
                return
            except VSphereError as exc:
                log.warning("completing the NFC lease for %s failed: %s", self.label, exc)
        with contextlib.suppress(VSphereError):
            self.session.call(self.lease.HttpNfcLeaseAbort, what="abort NFC lease")
            log.info("NFC export lease for %s aborted", self.label)

    def lease_state(self) -> str | None:
        with contextlib.suppress(Exception):
            return str(self.session.get(self.lease, "state"))
        return None

    # -- progress -------------------------------------------------------------------------------
    def percent(self) -> int:
        total = sum(self.capacities.values()) or 1
        with self._lock:
            done = sum(s.delivered for s in self._sources.values())
        return max(0, min(99, done * 100 // total))

    def _progress(self, percent: int | None = None) -> None:
        pct = self.percent() if percent is None else percent
        try:
            self.session.call(self.lease.HttpNfcLeaseProgress, pct, what="NFC lease progress")
        except VSphereError as exc:
            self.progress_error = NfcLeaseError(
                self.label, _lease_fault(self.session, self.lease) or exc.get_message()
            )
            raise self.progress_error from None

    def _keep_alive(self) -> None:
        interval = max(1.0, min(60.0, self.timeout_s / 4))
        while not self._stop.wait(interval):
            try:
                self._progress()
            except VSphereError as exc:
                log.warning("NFC lease for %s: %s", self.label, exc)
                return


def _lease_fault(session: Session, lease: Any) -> str | None:
    with contextlib.suppress(Exception):
        err = session.get(lease, "error")
        if err is not None:  # pyVmomi hands the LocalizedMethodFault over as the fault itself
            msg = getattr(err, "msg", None) or getattr(err, "localizedMessage", None)
            return f"{type(err).__name__.rsplit('.', 1)[-1]}: {msg}" if msg else type(err).__name__
    return None


def _map_urls(info: Any, devices: Sequence[Any], session: Session, label: str
              ) -> tuple[dict[int, str], dict[int, int]]:
    """Device key → absolute URL and capacity, from the lease's device URL keys
    (``/vm-12/VirtualLsiLogicController0:1``).  When a key names no slot we know but the lease
    has exactly one disk URL per disk, they are paired in device order (and a warning says so);
    otherwise :class:`NfcError`."""
    from pyVmomi import vim

    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    by_slot = {device_slot(d, controllers): d for d in disks}
    disk_urls = [u for u in info.deviceUrl or [] if u.disk]
    pairs = [(by_slot.get(u.key.rsplit("/", 1)[-1]), u) for u in disk_urls]
    if any(disk is None for disk, _ in pairs):
        unknown = [u.key for disk, u in pairs if disk is None]
        # snapshots (and exports) leave independent disks and physical-mode RDMs out
        kept = {d.key for d in disks_from_devices(disks, {}) if d.in_snapshots}
        exported = [d for d in disks if d.key in kept]
        if len(disk_urls) != len(exported):
            raise NfcError(label, f"lease devices {unknown} match no disk of the VM")
        log.warning("NFC lease for %s: device keys %s unknown; disks paired in device order",
                    label, unknown)
        pairs = list(zip(exported, disk_urls, strict=True))
    urls, caps = {}, {}
    for disk, dev_url in pairs:
        assert disk is not None
        urls[disk.key] = str(dev_url.url)
        caps[disk.key] = int(disk.capacityInBytes or disk.capacityInKB * 1024)
    return urls, caps


class _Stream:
    """A device URL's body, read with the session's cookie over TLS verified against the host
    that serves the lease (:func:`vmkeep.vsphere.hosts.url_and_tls`)."""

    def __init__(self, session: Session, url: str, label: str) -> None:
        url, context = url_and_tls(session, url)  # the serving ESXi host's own certificate
        parts = urlsplit(url)
        self.label = label
        self.pool = https_pool(
            parts.hostname or session.host, parts.port or 443, context, STREAM_TIMEOUT, 1
        )
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            self.resp = self.pool.urlopen(
                "GET", path, headers={"Cookie": session.cookie}, redirect=False,
                preload_content=False, decode_content=False,
            )
        except TRANSFER_ERRORS as exc:
            self.pool.close()
            raise NfcError(label, f"device URL: {type(exc).__name__}") from None
        if self.resp.status != 200:
            self.close()
            raise NfcError(label, f"device URL answered HTTP {self.resp.status}")

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self.resp.read(None if size < 0 else size)
        except TRANSFER_ERRORS as exc:
            raise NfcError(self.label, f"stream broken: {type(exc).__name__}") from None

    def close(self) -> None:
        self.resp.close()
        self.pool.close()


class NfcDiskSource:
    """One disk's stream as a pread-able source for the chunker (see the module docstring)."""

    chain = None  # no delta chain to inspect (transports.ExtentReader compatibility)
    random_access = False  # CBT audits need random reads: not on this source

    def __init__(self, export: NfcExport, disk: VirtualDisk, url: str) -> None:
        self.export, self.disk, self.url = export, disk, url
        self.name = disk.file_name
        self.size = disk.capacity
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._reader: StreamReader | None = None
        self._grains: Iterator[tuple[int, bytes]] | None = None
        self._pending: dict[int, bytes] = {}  # grain offset → data, not yet fully read
        self._left: dict[int, int] = {}  # grain offset → bytes not yet read
        self._starts: list[int] = []  # sorted keys of _pending
        self._plan: list[tuple[int, int]] | None = None  # sorted, merged [start, end)
        self._plan_starts: list[int] = []
        self._pos = 0
        self._pending_bytes = 0
        self.peak_pending = 0  # most decoded bytes waiting at once (the memory bound)
        self._broken: BaseException | None = None
        self._served: set[int] = set()  # offsets already read (each is read once)
        self.delivered = 0  # disk offset up to which the stream has been decoded
        self.finished = False
        self._closed = False

    # -- planning -------------------------------------------------------------------------------
    def plan_reads(self, extents: Sequence[tuple[int, int]] | None, chunk_size: int) -> None:
        """The consumer reads only whole ``chunk_size`` chunks touching ``extents`` (None:
        everything).  Must be called before the first read."""
        if extents is None:
            self._plan = None
            return
        spans: list[tuple[int, int]] = []
        for off, length in sorted(extents):
            if length <= 0:
                continue
            start = off // chunk_size * chunk_size
            end = min(self.size, -(-(off + length) // chunk_size) * chunk_size)
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        self._plan = spans
        self._plan_starts = [start for start, _ in spans]

    def _planned(self, offset: int, length: int) -> bool:
        """Does the consumer read any byte of ``offset+length``?"""
        if self._plan is None:
            return True
        i = bisect.bisect_right(self._plan_starts, offset) - 1
        if i >= 0 and self._plan[i][1] > offset:
            return True
        return i + 1 < len(self._plan) and self._plan[i + 1][0] < offset + length

    def _covered(self, offset: int, length: int) -> bool:
        if self._plan is None:
            return True
        i = bisect.bisect_right(self._plan_starts, offset) - 1
        return i >= 0 and self._plan[i][0] <= offset and offset + length <= self._plan[i][1]

    # -- reading --------------------------------------------------------------------------------
    def _start(self) -> None:
        try:
            self._stream = _Stream(self.export.session, self.url, self.name)
            self._reader = StreamReader(self._stream, self.name)
        except (NfcError, StreamFormatError) as exc:
            self._broken = exc
            self._blame_lease()
            raise
        if self._reader.capacity != self.size:
            raise NfcError(self.name, f"the stream describes {self._reader.capacity} bytes, "
                           f"vSphere says {self.size}")
        self._grains = self._reader.grains(decode=self._planned)
        with contextlib.suppress(VSphereError):
            self.export._progress()

    def _blame_lease(self) -> None:
        """A stream cut short is the lease's doing when the lease has ended: say so.  The
        error is kept: every later read of this source raises it again."""
        if self.export.progress_error is not None:
            self._broken = self.export.progress_error
        elif self.export.lease_state() == "error":
            self._broken = NfcLeaseError(
                self.name, _lease_fault(self.export.session, self.export.lease) or "error"
            )
        else:
            return
        raise self._broken from None

    def _advance(self) -> bool:
        """Decode the next grain into the pending set; False at the end of the stream.  The
        first error breaks the source for good (a stream cannot resume)."""
        assert self._grains is not None and self._reader is not None
        if self._broken is not None:
            raise self._broken
        try:
            offset, data = next(self._grains)
        except StopIteration:
            if not self._reader.finished:  # pragma: no cover - the generator ends only at EOS
                raise NfcError(self.name, "the stream ended without its end marker") from None
            self.delivered = self.size
            self.finished = True
            return False
        except (NfcError, StreamFormatError) as exc:
            self._broken = exc
            self._blame_lease()
            raise
        except BaseException as exc:
            self._broken = exc
            raise
        self._pending[offset] = data
        self._pending_bytes += len(data)
        self.peak_pending = max(self.peak_pending, self._pending_bytes)
        self._left[offset] = len(data)
        self._starts.append(offset)  # grains arrive in increasing order
        self.delivered = offset + len(data)
        return True

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (zeros past the end)."""
        length = max(0, min(length, self.size - offset))
        with self._lock:
            if self._closed:
                raise NfcError(self.name, "read after close")
            if not self._covered(offset, length):
                raise NfcError(self.name, f"read of {offset}+{length} outside the planned areas")
            if offset in self._served:
                raise NfcError(self.name, f"second read at {offset}: a stream cannot rewind")
            self._served.add(offset)
            if self._broken is not None:
                raise self._broken
            if self._grains is None:
                self._start()
            while not self.finished and self.delivered < offset + length:
                self._advance()
            return self._take(offset, length)

    def _take(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        end = offset + length
        i = bisect.bisect_right(self._starts, offset) - 1
        i = max(i, 0)
        while i < len(self._starts) and self._starts[i] < end:
            g = self._starts[i]
            data = self._pending[g]
            lo, hi = max(g, offset), min(g + len(data), end)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - g : hi - g]
                self._left[g] -= hi - lo
                if self._left[g] <= 0:
                    self._pending_bytes -= len(data)
                    del self._pending[g], self._left[g], self._starts[i]
                    continue
            i += 1
        return bytes(out)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """File-like position for :func:`read` (forward reads of a stream only)."""
        self._pos = {0: 0, 1: self._pos, 2: self.size}[whence] + offset
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        size = self.size - self._pos if size < 0 else size
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def read_extents(
        self, extents: Sequence[tuple[int, int]], *, block: int = 4 << 20
    ) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` per ``block`` of ``extents`` (ascending), like
        :meth:`vmkeep.vsphere.transports.ExtentReader.read_extents`."""
        for off, length in extents:
            for i in range(0, length, block):
                yield off + i, self.pread(off + i, min(block, length - i))

    def finish(self) -> None:
        """Read the rest of the stream to its end-of-stream marker (skipping grains)."""
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._grains is None:
                self._start()
            self._plan, self._plan_starts = [], []  # nothing else is read: skip, not inflate
            while self._advance():
                pass
            self._pending.clear()
            self._left.clear()
            self._starts.clear()
            self._pending_bytes = 0
        with contextlib.suppress(VSphereError):
            self.export._progress()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._stream is not None:
                self._stream.close()
            self._pending.clear()
        self.export._closed_source(self)
