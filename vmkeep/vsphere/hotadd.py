"""The ``hotadd`` transport: read a snapshot's disks as local block devices of a data-mover VM.

When vmkeep runs inside a VM (the *mover*), it can attach a snapshot's frozen disk file to
itself with ``ReconfigVM`` (a ``VirtualDisk`` device ``add`` without ``fileOperation``, backing
``fileName`` = the file the snapshot's config names, ``diskMode`` ``independent_nonpersistent``:
the mover's writes, if any, go to a throw-away redo log and the frozen file is opened read-only,
as VDDK's hotadd does).  The guest OS then sees a new SCSI disk; with ``disk.EnableUUID`` on the
mover, Linux names it ``/dev/disk/by-id/scsi-3<disk uuid, 32 lowercase hex>``.  vmkeep opens
that device and reads it with ``pread`` at the offsets it needs, so CBT still applies (only the
changed extents are read) and nothing goes through vCenter or an ESXi web server.

Restores in place (quick rollback) attach the other way round: a powered-off VM's own current
disk, ``independent_persistent``, written through the device (:func:`writable_device`); vSphere
refuses a running VM's disk, and while it is attached the VM neither powers on nor takes
snapshots.  The same marks, detach and sweep apply.

Contracts:

* **Which mover.** ``--mover VM`` (the mover VM's name or its BIOS UUID), else ``VMKEEP_MOVER``,
  else this machine's SMBIOS UUID (``/sys/class/dmi/id/product_uuid``; root only on most
  systems; both byte orders of its first three fields are tried, as vSphere's ``config.uuid``
  and SMBIOS differ there).  Not found: :class:`MoverNotFound`.
* **Where the devices appear.** ``VMKEEP_HOTADD_DEVICE_DIR`` (default ``/dev/disk/by-id``; the
  ESX lab's ready document names its mover's folder).  A device that does not appear within
  ``DEVICE_TIMEOUT`` seconds: :class:`HotaddDeviceMissing` (and the disk is detached).
* **Possible?** :func:`hotadd_possible` — the mover has ``disk.EnableUUID=TRUE`` and its host
  mounts the disk's datastore (what ``--transport auto`` asks first).  vSphere refusing the
  attach (datastore not visible from the mover's host, file locked, no free unit):
  :class:`HotaddRefused`, exit code 16.
* **Marking.** Every attach writes, in the same ``ReconfigVM``, the mover's ``extraConfig`` key
  ``vmkeep.hotadd.<run id>.<source disk key>`` = ``created=<ISO UTC>;run=<run id>;vm=<instance
  uuid>;file=<datastore path>``.  Only disks with such a mark are ever detached by vmkeep; a
  disk someone else attached is never touched.
* **Detach always.** :class:`HotaddReader` detaches (device ``remove`` without
  ``fileOperation`` — the other VM's file is never deleted — and the mark cleared, one
  ``ReconfigVM``) when closed; the backup closes every reader in ``finally`` before it removes
  its snapshot (vSphere cannot consolidate a file a mover holds).  After a crash (kill -9),
  :func:`sweep_hotadd` — run by the snapshot sweep before it removes snapshots — detaches the
  marked disks whose run is no longer active and that are older than the sweep's age.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vmkeep import clock
from vmkeep.retry import RetryPolicy
from vmkeep.settings import settings
from vmkeep.storage import crash_points
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import NotFound, TaskFailed, VSphereError
from vmkeep.vsphere.inventory import VirtualDisk, datacenter_path, vm_properties
from vmkeep.vsphere.transports import ExtentReader, LocalSource, _Piece
from vmkeep.vsphere.waiter import wait_for_task

log = logging.getLogger(__name__)

MOVER_ENV = "VMKEEP_MOVER"
DEVICE_DIR_ENV = "VMKEEP_HOTADD_DEVICE_DIR"
DEFAULT_DEVICE_DIR = "/dev/disk/by-id"
DMI_UUID_FILE = "/sys/class/dmi/id/product_uuid"
MARK_PREFIX = "vmkeep.hotadd."
DEVICE_TIMEOUT = 120.0
DISK_MODE = "independent_nonpersistent"
#: a powered-off VM's disk attached for writing (restores in place): writes reach the disk file,
#: and the mover's own snapshots leave it out
WRITE_MODE = "independent_persistent"
UNIT_ATTEMPTS = 5
#: attaching again when another process took the free unit first (no pause: re-read and retry)
UNIT_RACE_RETRY = RetryPolicy(retries=UNIT_ATTEMPTS - 1, delay_s=0.0)


def _unit_taken(exc: BaseException) -> bool:
    return isinstance(exc, TaskFailed) and "InvalidDeviceSpec" in exc.args[1]
_attach_lock = threading.Lock()
_MARK = re.compile(
    r"^created=(?P<created>[^;]+);run=(?P<run>[A-Za-z0-9._-]{1,64});vm=(?P<vm>[^;]*);file=(?P<file>.+)$"
)


class HotaddRefused(VSphereError):
    """Hot-add of {} to mover VM {} refused: {}"""


class MoverNotFound(VSphereError):
    """Cannot use hot-add: {}"""


class HotaddDeviceMissing(VSphereError):
    """Hot-added disk {} did not appear as {} within {:.0f} s (disk.EnableUUID on the mover?)"""

    is_transient = True


@dataclass(frozen=True)
class Mover:
    """The data-mover VM vmkeep runs in."""

    ref: Any = field(repr=False, compare=False)
    name: str
    host: str
    datastores: frozenset[str]  # datastores its host mounts
    device_dir: str
    enable_uuid: bool = True  # extraConfig disk.EnableUUID: Linux names disks by their UUID
    #: inventory path of its datacenter (``Region/DC1``): the datastore names it sees are
    #: that datacenter's (names are unique per datacenter only); None when unknown
    datacenter: str | None = None


@dataclass(frozen=True)
class Mark:
    key: str
    run_id: str
    created: datetime
    vm_uuid: str
    file_name: str


def mark_key(run_id: str, disk_key: int) -> str:
    return f"{MARK_PREFIX}{run_id}.{disk_key}"


def mark_value(run_id: str, vm_uuid: str, file_name: str, created: datetime | None = None) -> str:
    when = (created or clock.now()).isoformat(timespec="seconds")
    return f"created={when};run={run_id};vm={vm_uuid};file={file_name}"


def parse_mark(key: str, value: Any) -> Mark | None:
    """A vmkeep hot-add mark, or None when ``key``/``value`` is not one (never ours to touch)."""
    if not key.startswith(MARK_PREFIX) or not isinstance(value, str):
        return None
    m = _MARK.match(value)
    if not m or not key.startswith(f"{MARK_PREFIX}{m.group('run')}."):
        return None
    try:
        created = datetime.fromisoformat(m.group("created"))
    except ValueError:
        return None
    if created.tzinfo is None:
        return None
    return Mark(key, m.group("run"), created, m.group("vm"), m.group("file"))


def by_id_name(uuid: str) -> str:
    """The ``/dev/disk/by-id`` name Linux gives a VMware disk with this UUID (EnableUUID)."""
    return "scsi-3" + uuid.replace("-", "").replace(" ", "").lower()


# -- finding the mover ----------------------------------------------------------------------------
def _swapped(uuid: str) -> str:
    """SMBIOS ↔ vSphere byte order of the first three UUID fields."""
    h = uuid.replace("-", "").lower()
    if len(h) != 32:
        return uuid
    a = "".join(reversed([h[i : i + 2] for i in range(0, 8, 2)]))
    b = h[10:12] + h[8:10]
    c = h[14:16] + h[12:14]
    return f"{a}-{b}-{c}-{h[16:20]}-{h[20:]}"


def _dmi_uuid() -> str | None:
    try:
        return Path(DMI_UUID_FILE).read_text().strip().lower() or None
    except OSError:
        return None


def find_mover(session: Session, mover: str | None = None) -> Mover:
    """The mover VM (see the module docstring for how it is named)."""
    wanted = mover or settings().mover or None
    candidates = [wanted] if wanted else []
    if not wanted:
        dmi = _dmi_uuid()
        if dmi is None:
            raise MoverNotFound(
                "this machine's VM is unknown: pass --mover VM (name or BIOS UUID) or set "
                f"{MOVER_ENV}"
            )
        candidates = [dmi, _swapped(dmi)]
    paths = ["name", "config.uuid", "runtime.host", "config.extraConfig"]
    found = _by_bios_uuid(session, candidates, paths)
    if found is None and wanted and not _UUID.match(wanted):  # a name: one inventory listing
        found = next(
            ((vm, p) for vm, p in vm_properties(session, paths) if p.get("name") == wanted), None
        )
    if found is None:
        raise MoverNotFound(f"no VM named or with BIOS UUID {' / '.join(candidates)}")
    vm, props = found
    host_ref = props.get("runtime.host")
    if host_ref is None:
        raise MoverNotFound(f"mover VM {props.get('name')} runs on no host")
    hp = session.props(host_ref, ["name", "datastore"])
    datacenter = datacenter_path(session, host_ref)
    names = set()
    for ds in hp.get("datastore") or []:
        with_name = session.get(ds, "name")
        if with_name:
            names.add(with_name)
    extra = {o.key.lower(): o.value for o in props.get("config.extraConfig") or []}
    return Mover(
        vm, props.get("name", ""), hp.get("name", ""), frozenset(names),
        str(settings().hotadd_device_dir or DEFAULT_DEVICE_DIR),
        str(extra.get("disk.enableuuid", "")).upper() == "TRUE", datacenter,
    )


_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


def _by_bios_uuid(
    session: Session, candidates: Sequence[str], paths: list[str]
) -> tuple[Any, dict[str, Any]] | None:
    """The VM whose BIOS UUID (``config.uuid``) is one of ``candidates`` (one call each)."""
    index = session.content.searchIndex
    for uuid in candidates:
        if not _UUID.match(uuid):
            continue
        ref = session.call(
            index.FindByUuid, None, uuid, True, False, idempotent=True, what="FindByUuid"
        )
        if ref is not None:
            return ref, session.props(ref, paths)
    return None


def hotadd_possible(
    mover: Mover | None, disk: VirtualDisk, *, source_vm: str | None = None,
    source_datacenter: str | None = None,
) -> tuple[bool, str]:
    """Can ``disk`` (of VM ``source_vm``, in datacenter ``source_datacenter``) be hot-added to
    ``mover``?  ``(yes, why)`` — what ``--transport auto`` asks first.  No vSphere call: the
    mover was looked up already.  A VM of another datacenter is refused: the disk's datastore
    name would mean the mover's datacenter's datastore of that name, if any."""
    if mover is None:
        return False, "vmkeep does not run in a known mover VM"
    if not mover.enable_uuid:
        return False, (
            f"mover {mover.name} lacks disk.EnableUUID=TRUE (its OS could not tell hot-added "
            "disks apart): set it while the VM is off"
        )
    if source_vm is not None and source_vm == mover.name:
        return False, f"{mover.name} is the mover itself: it cannot hot-add its own disks"
    if not (disk.uuid or "").strip():
        return False, (f"{disk.file_name} reports no disk UUID: the mover's OS could not tell "
                       "which device it is")
    datastore = disk.datastore or split_datastore_path(disk.file_name)[0]
    if source_datacenter and mover.datacenter and source_datacenter != mover.datacenter:
        return False, (f"mover {mover.name} is in datacenter {mover.datacenter}, the disk's VM in "
                       f"{source_datacenter}: a disk is hot-added within its datacenter only")
    if datastore not in mover.datastores:
        return False, f"mover {mover.name}'s host {mover.host} does not mount datastore {datastore}"
    return True, f"mover {mover.name} on {mover.host} sees datastore {datastore}"


# -- attach / detach ------------------------------------------------------------------------------
@dataclass
class Attachment:
    mover: Mover
    device_key: int
    file_name: str
    mark: str
    device_path: str
    detached: bool = False


def _devices(session: Session, mover: Mover) -> list[Any]:
    return list(session.get(mover.ref, "config.hardware.device") or [])


def _extra(session: Session, mover: Mover) -> dict[str, Any]:
    return {o.key: o.value for o in session.get(mover.ref, "config.extraConfig") or []}


def _attached_disk(devices: Sequence[Any], file_name: str) -> Any:
    from pyVmomi import vim

    for dev in devices:
        if (
            isinstance(dev, vim.vm.device.VirtualDisk)
            and getattr(dev.backing, "fileName", None) == file_name
        ):
            return dev
    return None


def _free_slot(devices: Sequence[Any]) -> tuple[int, int]:
    """(controller key, unit number) of the first free unit on a SCSI controller of the mover."""
    from pyVmomi import vim

    controllers = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
    for ctrl in controllers:
        used = {d.unitNumber for d in devices if d.controllerKey == ctrl.key}
        for unit in range(16):
            if unit != 7 and unit not in used:  # 7: the controller itself
                return ctrl.key, unit
    raise VSphereError("the mover VM has no SCSI controller with a free unit")


def _reconfigure(session: Session, mover: Mover, spec: Any, what: str) -> None:
    task = session.call(mover.ref.ReconfigVM_Task, spec, what=what)
    wait_for_task(session, task, timeout=600, what=what)


def attach(
    session: Session, mover: Mover, disk: VirtualDisk, run_id: str, vm_uuid: str,
    disk_mode: str = DISK_MODE,
) -> Attachment:
    """Hot-add ``disk`` to the mover, marked as this run's: a snapshot's disk read-only
    (``independent_nonpersistent``), or with :data:`WRITE_MODE` a powered-off VM's own disk."""

    key = mark_key(run_id, disk.key)

    def once() -> Attachment | None:
        devices = _devices(session, mover)
        existing = _attached_disk(devices, disk.file_name)
        if existing is not None:  # a retried step: ours already, or someone else's
            mark = parse_mark(key, _extra(session, mover).get(key))
            if mark is None or mark.file_name != disk.file_name:
                raise HotaddRefused(disk.file_name, mover.name, "already attached, not by this run")
            return _attachment(mover, existing, disk.file_name, key)
        _attach_once(session, mover, disk, key, run_id, vm_uuid, devices, disk_mode)
        return None

    with _attach_lock:  # VMs backed up in parallel threads: one free unit each
        try:  # another process took the unit between our read and our ReconfigVM: retry
            done = UNIT_RACE_RETRY.call(once, what=f"hot-add {disk.file_name}",
                                        retryable=_unit_taken, sleep=lambda _: None)
        except TaskFailed as exc:
            raise HotaddRefused(disk.file_name, mover.name, exc.args[1]) from None
    if done is not None:
        return done
    dev = _attached_disk(_devices(session, mover), disk.file_name)
    if dev is None:
        raise HotaddRefused(disk.file_name, mover.name, "vSphere reported success, no device")
    att = _attachment(mover, dev, disk.file_name, key)
    log.info("hot-added %s to %s as %s", disk.file_name, mover.name, att.device_path)
    crash_points.reached("hotadd-attached")
    return att


def _attach_once(
    session: Session, mover: Mover, disk: VirtualDisk, key: str, run_id: str, vm_uuid: str,
    devices: Sequence[Any], disk_mode: str,
) -> None:
    from pyVmomi import vim

    ctrl, unit = _free_slot(devices)
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=disk.file_name, diskMode=disk_mode
    )
    device = vim.vm.device.VirtualDisk(
        key=-100, controllerKey=ctrl, unitNumber=unit, backing=backing,
        capacityInBytes=disk.capacity, capacityInKB=disk.capacity // 1024,
    )
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=device)],
        extraConfig=[vim.option.OptionValue(
            key=key, value=mark_value(run_id, vm_uuid, disk.file_name)
        )],
    )
    _reconfigure(session, mover, spec, f"hot-add {disk.file_name}")


def _attachment(mover: Mover, dev: Any, file_name: str, key: str) -> Attachment:
    uuid = getattr(dev.backing, "uuid", None) or ""
    path = os.path.join(mover.device_dir, by_id_name(uuid))
    return Attachment(mover, int(dev.key), file_name, key, path)


def detach(session: Session, att: Attachment) -> None:
    """Remove the hot-added disk (never its file) and clear its mark; idempotent."""
    if att.detached:
        return
    _detach(session, att.mover.ref, att.device_key, att.file_name, att.mark)
    att.detached = True
    log.info("detached %s from %s", att.file_name, att.mover.name)


def _detach(session: Session, mover_ref: Any, device_key: int, file_name: str, mark: str) -> None:
    from pyVmomi import vim

    devices = list(session.get(mover_ref, "config.hardware.device") or [])
    dev = next((d for d in devices if d.key == device_key), None)
    changes = []
    if dev is not None and getattr(dev.backing, "fileName", None) == file_name:
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="remove", device=dev))
    spec = vim.vm.ConfigSpec(
        deviceChange=changes, extraConfig=[vim.option.OptionValue(key=mark, value="")]
    )
    task = session.call(mover_ref.ReconfigVM_Task, spec, what=f"detach {file_name}")
    wait_for_task(session, task, timeout=600, what=f"detach {file_name}")


def wait_for_device(path: str, timeout: float = DEVICE_TIMEOUT) -> None:
    """Poll until the hot-added disk's device node exists (udev may take a moment)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise HotaddDeviceMissing(os.path.basename(path), path, timeout)
        time.sleep(0.1)


# -- the reader -----------------------------------------------------------------------------------
class CountingSource(LocalSource):
    """``pread`` on the device (a :class:`~.transports.LocalSource`), counting the bytes read
    (what CBT saves is measurable)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.bytes_read = 0
        self._lock = threading.Lock()

    def pread(self, offset: int, length: int) -> bytes:
        data = super().pread(offset, length)
        with self._lock:
            self.bytes_read += length
        return data


class HotaddReader(ExtentReader):
    """A :class:`~.transports.ExtentReader` over a hot-added device; ``close()`` detaches."""

    def __init__(
        self, session: Session, att: Attachment, source: CountingSource, capacity: int,
        parallel: int,
    ) -> None:
        super().__init__(att.file_name, [_Piece(0, capacity, source, 0)], parallel=parallel)
        self.session, self.attachment, self.source = session, att, source

    def close(self) -> None:
        """Close the device, then detach; a failed detach is logged, not raised (the caller is
        closing every disk, often in a ``finally``): its snapshot then stays too, and the
        sweep detaches the disk before it removes the snapshot."""
        if self.closed:
            return
        try:
            super().close()
        finally:
            try:
                detach(self.session, self.attachment)
            except VSphereError as exc:
                att = self.attachment
                log.error("could not detach %s from %s (%s); the sweep will",
                          att.file_name, att.mover.name, exc.get_message())


def open_hotadd(
    session: Session,
    disk: VirtualDisk,
    mover: Mover,
    run_id: str,
    vm_uuid: str,
    *,
    source_vm: str | None = None,
    source_datacenter: str | None = None,
    parallel: int = 4,
) -> HotaddReader:
    """Attach ``disk`` to ``mover`` and return a reader over its device whose ``close()``
    detaches it (``reader.source.bytes_read`` counts what was read); :class:`HotaddRefused`
    when :func:`hotadd_possible` says no."""
    ok, why = hotadd_possible(mover, disk, source_vm=source_vm,
                              source_datacenter=source_datacenter)
    if not ok:
        raise HotaddRefused(disk.file_name, mover.name, why)
    att = attach(session, mover, disk, run_id, vm_uuid)
    try:
        wait_for_device(att.device_path)
        source = CountingSource(att.device_path)
    except BaseException:
        detach(session, att)
        raise
    return HotaddReader(session, att, source, disk.capacity, parallel)


@contextmanager
def writable_device(
    session: Session, disk: VirtualDisk, mover: Mover, run_id: str, vm_uuid: str,
    *, source_vm: str | None = None, source_datacenter: str | None = None,
) -> Iterator[str]:
    """Hot-add ``disk`` — the current disk of a powered-off VM without snapshots — to ``mover``
    for writing (:data:`WRITE_MODE`) and yield its device path; detached when the block ends,
    whatever happened in it (a detach that fails then is logged, and the sweep detaches it:
    until then vSphere will not power the VM on).  vSphere refuses a running VM's disk or a
    delta of a chain (:class:`HotaddRefused`).  Writes go to the disk file past the VM's host,
    so its changed-block tracking does not see them."""
    ok, why = hotadd_possible(mover, disk, source_vm=source_vm,
                              source_datacenter=source_datacenter)
    if not ok:
        raise HotaddRefused(disk.file_name, mover.name, why)
    att = attach(session, mover, disk, run_id, vm_uuid, WRITE_MODE)
    failed = False
    try:
        wait_for_device(att.device_path)
        yield att.device_path
    except BaseException:
        failed = True
        raise
    finally:
        try:
            detach(session, att)
        except VSphereError as exc:
            if not failed:
                raise
            log.error("could not detach %s from %s (%s); the sweep will",
                      att.file_name, mover.name, exc.get_message())


# -- the sweep ------------------------------------------------------------------------------------
@dataclass
class HotaddSweepReport:
    detached: list[str] = field(default_factory=list)  # "mover: file (run)"
    failed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sweep_hotadd(
    session: Session, older_than: timedelta, active_runs: Sequence[str] | set[str] = ()
) -> HotaddSweepReport:
    """Detach hot-added disks vmkeep marked whose run is over and older than ``older_than``.

    Disks without vmkeep's mark are never touched.  A mark whose disk is gone is cleared.
    Failures are collected, not raised."""
    active = set(active_runs)
    cutoff = clock.now() - older_than
    return _detach_marked(
        session, lambda mark: mark.run_id not in active and mark.created <= cutoff
    )


def detach_run(session: Session, run_id: str) -> HotaddSweepReport:
    """Detach every disk run ``run_id`` hot-added (a crashed or cancelled run's hook)."""
    return _detach_marked(session, lambda mark: mark.run_id == run_id)


def _detach_marked(session: Session, wanted: Callable[[Mark], bool]) -> HotaddSweepReport:
    report = HotaddSweepReport()
    for vm, props in vm_properties(session, ["name", "config.extraConfig"]):
        name = props.get("name", "")
        for opt in props.get("config.extraConfig") or []:
            mark = parse_mark(opt.key, opt.value)
            if mark is None:
                continue
            what = f"{name}: {mark.file_name} (run {mark.run_id})"
            if not wanted(mark):
                report.kept.append(what)
                continue
            try:
                devices = list(session.get(vm, "config.hardware.device") or [])
                dev = _attached_disk(devices, mark.file_name)
                key = int(dev.key) if dev is not None else -1
                _detach(session, vm, key, mark.file_name, mark.key)
                report.detached.append(what)
                log.info("sweep: detached %s", what)
            except (VSphereError, NotFound) as exc:
                report.failed.append((what, exc.get_message()))
    return report
