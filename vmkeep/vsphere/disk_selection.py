"""Which of a VM's disks a backup leaves out: the job's disk exclusions (Veeam's "exclude disks").

A rule is ``[VM/]DISK``:

* ``VM`` (optional; without it the rule holds for every VM of the job) — a VM name, its
  instanceUuid or a glob pattern on its name, as ``--exclude`` takes them;
* ``DISK`` — the disk's virtual device node as the vSphere Client shows it (``scsi0:1``,
  ``sata0:0``, ``nvme0:0``, ``ide0:1``), its label (``Hard disk 2``) — either may be a glob
  (``scsi1:*``, ``Hard disk [2-9]``) — or its device key (``2001``); without regard to case.

An excluded disk is not read and not in the restore point; the point records it
(``meta.excluded_disks``) so that a VM restore creates it empty and says why.  It is still in
the VM's snapshot — vSphere snapshots every disk that is not independent — so its datastore
still counts for the free-space check.  A disk excluded once and included again later is read
whole the first time (no earlier backup of it to be incremental to).

Rules are checked when the job is given them (:func:`parse_rule`); a rule that names one VM
exactly (name or instanceUuid) but no disk of it is a warning, and excluding every disk of a VM
is refused (:class:`AllDisksExcluded`) before anything changes on it.  Excluding a disk does not
take it out of the snapshot: a VM with a shared (multi-writer) disk that is not independent
cannot be snapshotted at all (VMware KB 1034165), and is refused
(:func:`refuse_shared_disks`, :class:`SharedDisksInSnapshot`) before anything changes on it —
CBT's first stun included.  Pure functions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmkeep.errors import InputError
from vmkeep.vsphere.errors import EncryptedDiskUnreadable, VirtualRdmUnreadable, VSphereError
from vmkeep.vsphere.inventory import VirtualDisk, VMInfo


class AllDisksExcluded(InputError):
    """Bad input: VM {} has nothing left to back up: every disk is excluded, independent or a physical-mode RDM ({})."""  # noqa: E501


class SharedDisksInSnapshot(VSphereError):
    """VM {} cannot be snapshotted, so it was not backed up (nothing was changed on it): {} shared (multi-writer), and vSphere snapshots no VM with a shared disk that is not independent.  Make the shared disks independent-persistent (with the VM powered off) — backups then skip them, as every independent disk — and back up what they hold from inside a guest (`vmkeep backup files`)."""  # noqa: E501


@dataclass(frozen=True)
class DiskRule:
    """One exclusion: ``vm`` (None: every VM) and the ``disk`` it names."""

    text: str
    vm: str | None
    disk: str

    def holds_for(self, vm: VMInfo) -> bool:
        """Whether the rule concerns ``vm`` (no VM part, or a matching name, uuid or glob)."""
        if self.vm is None:
            return True
        return self.vm in (vm.name, vm.instance_uuid) or fnmatch.fnmatchcase(vm.name, self.vm)

    def names_exactly(self, vm: VMInfo) -> bool:
        """Whether the rule names ``vm`` itself (not by a pattern)."""
        return self.vm is not None and self.vm in (vm.name, vm.instance_uuid)

    def matches(self, disk: VirtualDisk) -> bool:
        """Whether the rule names ``disk``: its node or label (or a glob on either), or key."""
        want = self.disk.casefold()
        names = [n.casefold() for n in (disk.node, disk.label) if n]
        return str(disk.key) == self.disk or any(fnmatch.fnmatchcase(n, want) for n in names)


def parse_rule(text: str) -> DiskRule:
    """``[VM/]DISK`` → :class:`DiskRule`; ValueError for a rule without a disk."""
    vm, _, disk = text.strip().rpartition("/")
    disk = disk.strip()
    if not disk:
        raise ValueError(f"disk exclusion {text!r} names no disk: [VM/]DISK, e.g. "
                         "'db01/scsi0:1', 'Hard disk 2'")
    return DiskRule(text, vm.strip() or None, disk)


@dataclass(frozen=True)
class ExcludedDisk:
    """A disk left out of a backup, and the rule that left it out."""

    disk: VirtualDisk
    rule: str

    def record(self) -> dict[str, object]:
        """The point's ``meta.excluded_disks`` entry and the summary's."""
        return {"key": self.disk.key, "label": self.disk.label, "node": self.disk.node,
                "capacity": self.disk.capacity, "rule": self.rule}


def excluded_disks(
    vm: VMInfo, rules: Iterable[str], warnings: list[str] | None = None
) -> list[ExcludedDisk]:
    """The disks of ``vm`` that ``rules`` leave out (in device order).  A rule naming ``vm``
    exactly but none of its disks is a warning in ``warnings``.  :class:`AllDisksExcluded` when
    no disk that a snapshot holds is left."""
    mine = [r for r in map(parse_rule, rules) if r.holds_for(vm)]
    out: list[ExcludedDisk] = []
    for disk in vm.disks:
        rule = next((r for r in mine if r.matches(disk)), None)
        if rule is not None:
            out.append(ExcludedDisk(disk, rule.text))
    for rule in mine:
        if warnings is not None and rule.names_exactly(vm) and not any(map(rule.matches, vm.disks)):
            warnings.append(f"disk exclusion {rule.text!r} matches no disk of {vm.name} "
                                f"(disks: {describe(vm.disks)})")
    if out and not read_disks(vm, out):
        raise AllDisksExcluded(vm.name, describe(vm.disks))
    return out


def read_disks(vm: VMInfo, excluded: Sequence[ExcludedDisk] = ()) -> list[VirtualDisk]:
    """The disks of ``vm`` a backup reads: those a snapshot holds, less ``excluded``."""
    left_out = {e.disk.key for e in excluded}
    return [d for d in vm.disks if d.in_snapshots and d.key not in left_out]


def describe(disks: Sequence[VirtualDisk]) -> str:
    """``Hard disk 1 (scsi0:0, key 2000), …`` — how an error names a VM's disks."""
    return ", ".join(f"{d.label} ({d.node or '?'}, key {d.key})" for d in disks) or "none"


def refuse_shared_disks(vm: VMInfo) -> None:
    """:class:`SharedDisksInSnapshot` when ``vm`` has a shared (multi-writer) disk that a
    snapshot would hold (not independent); a template, read without a snapshot, never."""
    shared = [d for d in vm.disks if d.shared and d.in_snapshots]
    if shared and not vm.template:
        verb = "is" if len(shared) == 1 else "are"
        raise SharedDisksInSnapshot(vm.name, f"{describe(shared)} {verb}")


def refuse_encrypted_disks(
    vm: VMInfo, transport: str, excluded: Sequence[ExcludedDisk] = ()
) -> None:
    """:class:`~vmkeep.vsphere.errors.EncryptedDiskUnreadable` when ``vm`` has an encrypted
    disk a backup would read (in snapshots, not ``excluded``) and ``transport`` (asked for
    explicitly) cannot read it in the clear: only ``hotadd`` can (``auto`` decides per disk,
    after the snapshot)."""
    encrypted = [d for d in read_disks(vm, excluded) if d.encrypted]
    if encrypted and transport not in ("auto", "hotadd"):
        raise EncryptedDiskUnreadable(vm.name, describe(encrypted), f"over --transport {transport}")


def refuse_virtual_rdms(
    vm: VMInfo, transport: str, excluded: Sequence[ExcludedDisk] = ()
) -> None:
    """:class:`~vmkeep.vsphere.errors.VirtualRdmUnreadable` when ``vm`` has a virtual-mode RDM
    a backup would read (not ``excluded``) and ``transport`` (asked for explicitly) reads the
    datastore's files (``https``, ``direct``): the mapping's base is a LUN, no such file.  NFC
    and hot-add read it through the host; ``auto`` chooses NFC for it."""
    rdms = [d for d in read_disks(vm, excluded) if d.virtual_rdm]
    if rdms and transport in ("https", "direct"):
        raise VirtualRdmUnreadable(vm.name, describe(rdms), f"over --transport {transport}")
