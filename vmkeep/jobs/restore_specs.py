"""Typed specs of the restore jobs, validated before a job runs (see :mod:`vmkeep.jobs.specs`).

One spec per restore: :class:`RestoreVmSpec` (a whole VM from a VM point),
:class:`RestoreDiskSpec` (one disk attached to an existing VM), :class:`RestoreFilesSpec`
(files out of any point, into a folder or a running guest), :class:`RestoreFilePointSpec`
(paths of a file point, into a folder or a URL) and :class:`RestoreImageSpec` (one disk to a
raw image or a VMDK).  An empty repository, point, VM name, path list or target is refused here —
by the CLI before anything opens, by Prefect before a flow run starts.  Like every spec, they
hold no password: the vCenter target names a password file or Secret block, guest credentials
come from a file or the environment on the machine that runs the job.

Flat vCenter keywords (``vcenter=URL, user=…, cafile=…``) fold into the target as for the
backups.  Repository, point and options are shared through :class:`_FromPoint`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vmkeep.disks.restore_model import Ownership
from vmkeep.jobs.specs import Spec, _WithTarget
from vmkeep.storage.stream_out import STDOUT
from vmkeep.vsphere.target import VCenterTarget

#: ``--disk-format`` (:data:`vmkeep.vsphere.vmconfig.DISK_FORMATS`)
DiskFormat = Literal["same", "thin", "thick", "eagerzeroedthick"]


class _FromPoint(Spec):
    """A restore reads one restore point of one repository (read-only: no lock, no licence)."""

    repo: str = Field(min_length=1, description="repository URL or path")
    point: str = Field(min_length=1, description="restore point: id, prefix or NAME@latest")
    storage_options: dict[str, Any] | None = Field(
        None, description="non-secret fsspec options of the repository"
    )


class _Ownership(Spec):
    """Owners and set-id bits of restored files (local folders only; see
    :func:`vmkeep.disks.restore_model.refuse_ownership`)."""

    preserve_owner: bool = Field(False, description="numeric owner and group as backed up")
    keep_setid: bool = Field(False, description="keep set-uid/set-gid bits (with preserve_owner)")

    @property
    def ownership(self) -> Ownership:
        """The two fields as the restore libraries take them."""
        return Ownership(owner=self.preserve_owner, setid=self.keep_setid)


class RestoreVmSpec(_FromPoint, _WithTarget):
    """Recreate a whole VM (configuration, disks, optionally power) from a VM restore point."""

    name: str | None = Field(None, description="name of the new VM (default: the original)")
    host: str | None = Field(None, description="ESXi host (default: the original)")
    datastore: str | None = Field(None, description="datastore (default: the first disk's)")
    folder: str | None = Field(None, description="VM folder path (default: the root folder)")
    resource_pool: str | None = Field(
        None, description="resource pool or vApp path in the host's cluster (default: its root)"
    )
    power_on_after: bool = False
    overwrite: bool = Field(False, description="replace an existing VM of that name")
    transport: Literal["nfc", "https", "direct", "hotadd"] = Field(
        "nfc", description="nfc (any datastore), https or direct (VMFS/NFS); quick rollback: "
        "direct (NFS mounted here) or hotadd (this mover VM's host sees the datastore)"
    )
    keep_identity: bool = Field(
        False, description="keep BIOS/instance UUIDs and MACs (disaster recovery)"
    )
    networks: dict[str, str] | None = Field(
        None, description="source network → target network for the NICs (default: same name)"
    )
    connect_networks: bool = Field(
        False, description="NICs connect at power-on (default: they start disconnected)"
    )
    disk_format: DiskFormat = Field(
        "same", description="disks as backed up, thin, thick (lazily zeroed) or eagerzeroedthick"
    )
    restore_tags: bool | None = Field(
        None, description="attach the vSphere tags the VM carried at backup (those that exist "
        "here, by CATEGORY:TAG); default: only when restored to its original name, not to a copy"
    )
    drop_excluded_disks: bool = Field(
        False, description="leave the disks the point does not hold (excluded by the job, "
        "independent) out of the new VM instead of creating them empty"
    )
    datastore_mounts: dict[str, str] | None = Field(
        None, description="datastore name → local path (transport direct)"
    )
    quick_rollback: bool = Field(
        False, description="roll the original VM (powered off, without snapshots) back to the "
        "point in place, writing only the blocks changed since (CBT): through its NFS datastores "
        "mounted here (direct) or hot-added to this mover VM (hotadd); no new VM"
    )
    mover: str | None = Field(
        None, description="the data-mover VM vmkeep runs in, name or BIOS UUID (hotadd)"
    )
    yara_rules: list[str] = Field(
        default_factory=list, description="secure restore: scan the point's files with these "
        "YARA rule files or folders first; a match refuses the restore"
    )
    power_off_first: bool = Field(
        False, description="quick rollback: power the VM off first if it runs (hard: what its "
        "guest had not written is lost, as the rollback discards its disks' state anyway)"
    )

    @model_validator(mode="after")
    def _rollback_is_in_place(self) -> RestoreVmSpec:
        if not self.quick_rollback:
            if self.power_off_first:
                raise ValueError("--power-off applies to --quick-rollback (--overwrite powers the "
                                 "replaced VM off itself)")
            if self.transport == "hotadd":
                raise ValueError("hotadd writes disks only for a quick rollback; a new VM's "
                                 "disks go through nfc, https or direct")
            return self
        placed = {"--name": self.name, "--host": self.host, "--datastore": self.datastore,
                  "--folder": self.folder, "--resource-pool": self.resource_pool,
                  "--overwrite": self.overwrite, "--keep-identity": self.keep_identity,
                  "--network": self.networks, "--connect-networks": self.connect_networks,
                  "--disk-format": self.disk_format != "same",
                  "--drop-excluded-disks": self.drop_excluded_disks,
                  "--tags": self.restore_tags}
        given = [option for option, value in placed.items() if value]
        if given:
            raise ValueError("quick rollback restores the original VM in place; it takes none of "
                             + ", ".join(given))
        if self.transport == "https":
            raise ValueError("quick rollback writes through mounted datastores (direct) or "
                             "hot-added disks (hotadd), not https")
        if self.transport == "direct" and not self.datastore_mounts:
            raise ValueError("quick rollback with direct writes the changed blocks through the "
                             "VM's NFS datastores mounted here: give --datastore-mount NAME=PATH")
        return self

    @property
    def rollback_transport(self) -> Literal["direct", "hotadd"]:
        """How a quick rollback writes: as asked, else direct when datastores are mounted here,
        else hotadd."""
        if self.transport in ("direct", "hotadd"):
            return "direct" if self.transport == "direct" else "hotadd"
        return "direct" if self.datastore_mounts else "hotadd"


class RestoreDiskSpec(_FromPoint, _WithTarget):
    """Restore one disk of a point through NFC and attach it to an existing VM."""

    disk: int = Field(ge=0, description="disk index in the point (0 = first)")
    vm: str = Field(min_length=1, description="existing VM to attach the disk to")
    datastore: str | None = Field(None, description="datastore (default: the VM's)")
    disk_format: DiskFormat = Field(
        "same", description="the disk as backed up, thin, thick (lazily zeroed) or eagerzeroedthick"
    )
    replace: bool = Field(
        False, description="put the disk in the place of the VM's disk at the backed-up disk's "
        "device node (VM powered off, without snapshots; the replaced disk's files are kept)"
    )
    yara_rules: list[str] = Field(
        default_factory=list, description="secure restore: scan the point's files with these "
        "YARA rule files or folders first; a match refuses the restore"
    )


class RestoreImageSpec(_FromPoint):
    """Write one disk of a point to an image file — raw (bit-identical) or a monolithicFlat
    VMDK — or, with ``device``, into a block device in place."""

    target: str = Field(
        min_length=1, description="target file, block device with device, or - (standard output)"
    )
    disk: int = Field(0, ge=0)
    format: Literal["raw", "vmdk"] = "raw"
    overwrite: bool = Field(False, description="replace an existing regular file")
    device: bool = Field(
        False, description="write into the block device target, in place (its contents are lost)"
    )

    @model_validator(mode="after")
    def _device_is_raw(self) -> RestoreImageSpec:
        if (self.device or self.target == STDOUT) and self.format != "raw":
            raise ValueError("a disk is written into a device or a stream as raw bytes only")
        if self.device and self.target == STDOUT:
            raise ValueError("standard output (-) is not a block device")
        return self


class RestoreFilePointSpec(_FromPoint, _Ownership):
    """Restore paths of a file restore point into a folder or a ``sftp://`` / ``smb://`` URL."""

    target: str = Field(min_length=1, description="local folder or URL")
    paths: list[str] = Field(default_factory=lambda: ["/"], min_length=1)
    overwrite: bool = False
    target_options: dict[str, Any] | None = Field(
        None, description="non-secret fsspec options of a URL target"
    )

    @model_validator(mode="before")
    @classmethod
    def _none_is_everything(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("paths", True):
            data = dict(data, paths=["/"])  # callers pass None or [] for the whole tree
        return data


class RestoreFilesSpec(_FromPoint, _WithTarget, _Ownership):
    """Restore files out of any point into a local folder (``target``) or a running guest
    (``guest`` = ``VM:GUEST_DIR``, with ``vcenter``)."""

    paths: list[str] = Field(
        min_length=1, description="VOLUME/PATH of image/VM points, /PATH of file points"
    )
    target: str | None = Field(
        None, min_length=1, description="local folder (file points: also an sftp:// or smb:// URL)"
    )
    guest: str | None = Field(None, min_length=1, description="VM:GUEST_DIR")
    vcenter: VCenterTarget | None = None  # type: ignore[assignment]  # only guests need one
    guest_user: str | None = None
    guest_password_file: str | None = None
    overwrite: bool = False

    @model_validator(mode="after")
    def _one_destination(self) -> RestoreFilesSpec:
        if (self.target is None) == (self.guest is None):
            raise ValueError("give exactly one of target (a folder) or guest (VM:GUEST_DIR)")
        if self.guest is not None and self.vcenter is None:
            raise ValueError("a guest target needs vcenter")
        return self


#: flow name -> (job "module:function", spec type) of the restore flows
#: (:data:`vmkeep.flows.run.JOBS` includes them)
JOBS: dict[str, tuple[str, type[Spec]]] = {
    "restore-vm": ("vmkeep.jobs.restore_vm:restore_vm", RestoreVmSpec),
    "restore-disk": ("vmkeep.jobs.restore_disk:restore_disk", RestoreDiskSpec),
    "restore-files": ("vmkeep.jobs.restore_files:restore_files", RestoreFilesSpec),
    "restore-file-point": (
        "vmkeep.jobs.restore_file_point:restore_file_point", RestoreFilePointSpec
    ),
    "restore-image": ("vmkeep.jobs.restore_image:restore_image", RestoreImageSpec),
}
