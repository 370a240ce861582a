"""Free space on the datastores a VM's snapshot grows on, judged before the snapshot is taken.

A snapshot's delta disks live on the datastore of each disk they cover, its ``.vmsn`` in the VM's
home directory, and the deltas grow with every guest write for as long as the backup reads.  When
a datastore fills up, ESXi pauses every VM that needs to write there ("There is no more space for
virtual disk …") — production would stop because of a backup.  So, like Veeam's production
datastore thresholds (warn below 10 %, skip the VM below 5 %), a VM backup first reads the free
space of those datastores:

* below ``datastore_skip_free_percent`` (``VMKEEP_DATASTORE_SKIP_FREE_PERCENT``, default 5) on
  any of them: :class:`~vmkeep.vsphere.errors.DatastoreSpaceLow` — the VM is skipped, nothing was
  changed on it (no snapshot, CBT untouched), the other VMs of a ``backup vms`` run go on;
* below ``datastore_warn_free_percent`` (default 10): a warning, recorded in the restore point
  and the job report;
* ``0`` switches a threshold off.  A datastore that reports no capacity (``0``) or is not
  accessible is not judged (the snapshot itself then says what is wrong).

Restores ask the same summaries before creating anything (:func:`ensure_room`): a restore that
cannot fit fails at once with :class:`~vmkeep.vsphere.errors.NotEnoughSpace` instead of part-way
through its upload.

Read-only: one paged property query of the summaries of every datastore in the datacenter of
the VM or target host (``summary.freeSpace`` as vCenter last refreshed it; vmkeep does not ask
for a refresh with ``RefreshDatastore``).  Names are resolved in that datacenter only: another
datacenter may have a datastore of the same name (:mod:`vmkeep.vsphere.datastore_lookup`).
Independent disks are not in snapshots and do not count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmkeep.vsphere import datastore_lookup
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import DatastoreSpaceLow, NotEnoughSpace
from vmkeep.vsphere.inventory import VMInfo

SUMMARY_PATHS = ["name", "summary.capacity", "summary.freeSpace", "summary.accessible",
                 "summary.type"]


@dataclass(frozen=True)
class DatastoreSpace:
    """One datastore's size and free space, in bytes, as ``summary`` reports them."""

    name: str
    capacity: int
    free: int
    accessible: bool = True
    type: str = ""

    @property
    def free_percent(self) -> float | None:
        """Free space in percent of the capacity; ``None`` when the capacity is unknown."""
        return 100.0 * self.free / self.capacity if self.capacity > 0 else None

    def describe(self) -> str:
        """``datastore1: 4.0 % free (20.0 GiB of 500.0 GiB)``."""
        return (f"{self.name}: {self.free_percent or 0:.1f} % free "
                f"({_gib(self.free)} of {_gib(self.capacity)})")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def snapshot_datastores(vm: VMInfo) -> list[str]:
    """The datastores a snapshot of ``vm`` writes to: each snapshotted disk's (delta disks go
    beside their parent), the VM's home and its snapshot directory (the ``.vmsn``; the home
    unless ``workingDir`` moved it), sorted."""
    names = {d.datastore for d in vm.disks if d.in_snapshots and d.datastore}
    for path in (vm.vmx_path, vm.snapshot_dir):
        if path and path.startswith("["):
            names.add(split_datastore_path(path)[0])
    return sorted(names)


def read_space(session: Session, near: Any) -> dict[str, DatastoreSpace]:
    """The :class:`DatastoreSpace` of every datastore in ``near``'s datacenter (``near``: a VM
    or host), by name — unique there (one property query)."""
    out: dict[str, DatastoreSpace] = {}
    for _ref, p in datastore_lookup.datastores_near(session, near, SUMMARY_PATHS):
        name = str(p.get("name", ""))
        out[name] = DatastoreSpace(
            name=name,
            capacity=int(p.get("summary.capacity") or 0),
            free=int(p.get("summary.freeSpace") or 0),
            accessible=bool(p.get("summary.accessible", True)),
            type=str(p.get("summary.type", "")),
        )
    return out


def judge(
    vm_name: str,
    spaces: Mapping[str, DatastoreSpace],
    names: Iterable[str],
    *,
    warn_percent: float,
    skip_percent: float,
) -> list[str]:
    """The warnings for a snapshot of ``vm_name`` on datastores ``names``; raises
    :class:`DatastoreSpaceLow` naming every datastore below ``skip_percent``.  Pure: the
    thresholds and the space come from the caller."""
    low: list[str] = []
    warnings: list[str] = []
    for name in names:
        space = spaces.get(name)
        if space is None or not space.accessible or space.free_percent is None:
            continue
        percent = space.free_percent
        if skip_percent > 0 and percent < skip_percent:
            low.append(space.describe())
        elif warn_percent > 0 and percent < warn_percent:
            warnings.append(
                f"datastore {space.describe()}, below the warning threshold of {warn_percent:g} % "
                f"(VMKEEP_DATASTORE_WARN_FREE_PERCENT): the snapshot's delta disks grow there "
                f"while the backup reads"
            )
    if low:
        raise DatastoreSpaceLow(
            vm_name,
            f"datastore {'; '.join(low)} — below {skip_percent:g} % "
            "(VMKEEP_DATASTORE_SKIP_FREE_PERCENT); a snapshot's delta disks could fill it and "
            "pause the VMs on it. Free space there, or lower the threshold",
        )
    return warnings


def check(session: Session, vm: VMInfo, *, warn_percent: float, skip_percent: float) -> list[str]:
    """:func:`judge` for a snapshot of ``vm``, on the space vCenter reports now (nothing is read
    when both thresholds are off)."""
    if warn_percent <= 0 and skip_percent <= 0:
        return []
    return judge(vm.name, read_space(session, vm.ref), snapshot_datastores(vm),
                 warn_percent=warn_percent, skip_percent=skip_percent)


def ensure_room(session: Session, datastore: str, near: Any, needed: int, what: str,
                hint: str) -> None:
    """Raise :class:`NotEnoughSpace` when ``datastore`` (of ``near``'s datacenter: the target
    host or VM) reports less free space than ``needed`` bytes for ``what`` (a restore about to
    create files there); a datastore that reports no capacity, or that is not found there, is
    not judged (creating the VM says what is wrong)."""
    space = read_space(session, near).get(datastore)
    if space is None or space.capacity <= 0 or not space.accessible:
        return
    if space.free < needed:
        raise NotEnoughSpace(what, _gib(needed), datastore, _gib(space.free), hint)
