"""Typed job specifications: what a job is asked to do, validated before it runs.

Specs are pydantic models, so Prefect shows them as forms (a deployment's parameters are one
``spec``) and refuses an invalid one — an empty VM name, source or restore point name — *before*
a flow run starts.  The CLI builds the same objects, so both paths validate alike.  A spec never
holds a password: credentials come from files, Prefect Secret blocks or the environment, read
by the step that needs them on the machine that runs it (:mod:`vmkeep.tasks.vcenter`,
:mod:`vmkeep.tasks.source_credentials`); jobs refuse URLs with an embedded password and, inside
a Prefect run, secret-named storage/source options.

A spec's ``vcenter`` field is the one vCenter target, the plain frozen dataclass
:class:`vmkeep.vsphere.target.VCenterTarget` (the CLI hands it over as built from its options;
a deployment gives its fields as a mapping).  Pydantic validates it like a model: the URL must not
be empty, unknown keys and ``insecure`` with ``cafile``/``thumbprint`` are refused, and the
Prefect form shows its field descriptions.  For callers that pass flat keywords (older scripts and
tests: ``vcenter=URL, user=…, cafile=…``), the vCenter keywords are folded into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vmkeep.disks.restore_model import is_utf8
from vmkeep.errors import InputError, VmkeepError
from vmkeep.jobs import limits
from vmkeep.storage.cbt_audit import AuditPolicy
from vmkeep.vsphere.target import TARGET_FIELDS, VCenterTarget


class Spec(BaseModel):
    """Base of every spec: unknown fields are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)


class _WithTarget(Spec):
    """A spec that connects to vCenter/ESXi (flat keywords folded into its ``vcenter``)."""

    vcenter: VCenterTarget

    @model_validator(mode="before")
    @classmethod
    def _fold_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("vcenter"), str):
            data = dict(data)
            target = {"url": data.pop("vcenter")}
            for key in TARGET_FIELDS:
                if key != "url" and key in data:
                    target[key] = data.pop(key)
            data["vcenter"] = target
        return data


class VmBackupOptions(_WithTarget):
    """Options shared by one-VM and many-VM backups."""

    repo: str = Field(min_length=1, description="repository URL or path")
    transport: Literal["auto", "https", "direct", "nfc", "hotadd"] = Field(
        "auto",
        description="auto: per disk (hotadd in a mover VM that sees the datastore, else https "
        "for VMFS/NFS, nfc for vSAN/vVol)",
    )
    mover: str | None = Field(
        None, description="the data-mover VM vmkeep runs in, name or BIOS UUID (hotadd, auto)"
    )
    datastore_mounts: dict[str, str] | None = Field(
        None, description="datastore name → local path (transport direct)"
    )
    allow_vmfs_mount: bool = Field(
        False, description="direct: read VMFS mounted through vmfs-tools (experimental; off)"
    )
    remote_device: str | None = Field(None, description="this data mover's name (LAN-free)")
    quiesce: bool = True
    quiesce_policy: Literal["fail", "crash-consistent"] = "fail"
    enable_cbt: bool = Field(
        True, description="turn CBT on where it is off and supported (one stun, recorded)"
    )
    scan_every: int = Field(
        30, ge=0, description="every N-th CBT incremental of a disk reads it whole (0: never)"
    )
    read_whole: bool = Field(
        False, description="an active full: read every disk whole this run, whatever CBT says "
        "(compared with the previous point: unchanged data is still stored once)"
    )
    exclude_swap: bool = Field(
        False, description="record the guests' swap as zeros instead of reading it: Linux "
        "swap partitions and LVs, swap files (/swapfile, /swap.img, those in /etc/fstab), Windows "
        "pagefile.sys, swapfile.sys, hiberfil.sys"
    )
    exclude_deleted: bool = Field(
        False, description="record the free blocks of the guests' NTFS, ext2/3/4, XFS and "
        "Btrfs volumes as zeros instead of reading them (deleted data; quiesced snapshots or VMs "
        "not running only; vmkeep/disks/deleted_blocks.py)"
    )
    cbt_audit: str = Field(
        "0.5", description="CBT truth audit: 'off' or the percent of chunks sampled"
    )
    concurrency: dict[str, int] | None = Field(
        None, description="snapshot slots per 'host' and per 'datastore'"
    )
    stage_dir: str | None = Field(None, description="staging-proxy folder on this data mover")
    exclude_disks: list[str] = Field(
        default_factory=list,
        description="disks not backed up: [VM/]DISK, DISK a device node (scsi0:1), label "
        "(Hard disk 2, or a glob) or key (vmkeep/vsphere/disk_selection.py)",
    )
    retries: int = Field(
        0, ge=0, le=10, description="back up a VM whose backup failed again, this many times "
        "at most (vmkeep/jobs/vm_retries.py; the nightly deployments: 3)"
    )
    retry_wait_s: float = Field(
        600.0, ge=0, le=86400, description="seconds to wait before each retry"
    )

    @field_validator("cbt_audit", mode="before")
    @classmethod
    def _audit_policy(cls, value: Any) -> str:
        text = "0.5" if value is None else str(value)
        try:
            AuditPolicy.parse(text)
        except VmkeepError as exc:
            raise ValueError(exc.get_message()) from None
        return text

    @field_validator("exclude_disks", mode="before")
    @classmethod
    def _disk_rules(cls, value: Any) -> Any:
        # A deployment's unset Prefect variable renders as "" (or null): no exclusions.
        if value is None or (isinstance(value, str) and not value.strip()):
            return []
        rules = [value] if isinstance(value, str) else list(value)
        from vmkeep.vsphere.disk_selection import parse_rule

        for rule in rules:
            parse_rule(str(rule))  # ValueError: a clear spec error
        return rules

    def audit_policy(self) -> AuditPolicy | None:
        """The parsed :attr:`cbt_audit` (None: off)."""
        return AuditPolicy.parse(self.cbt_audit)

    @model_validator(mode="after")
    def _direct_needs_mounts(self) -> VmBackupOptions:
        if self.transport == "direct" and not self.datastore_mounts:
            raise ValueError("transport direct needs datastore_mounts")
        return self


class BackupVmSpec(VmBackupOptions):
    """Back up one VM."""

    vm: str = Field(min_length=1, description="VM name or instanceUuid")
    pre_freeze: str | None = Field(None, description="command run in the guest before")
    post_thaw: str | None = Field(None, description="command run in the guest after")
    post_backup: str | None = Field(
        None, description="command run in the guest once the restore point is committed (only "
        "then: e.g. database log truncation); a failure is a warning"
    )
    guest_user: str | None = None
    guest_password_file: str | None = None
    licence_checked: bool = Field(
        False, description="set by backup-vms, which checks the licence once for every VM"
    )
    vm_tags: list[str] | None = Field(
        None, description="set by backup-vms, which reads every selected VM's vSphere tags "
        "(CATEGORY:TAG) at its start in one vAPI session; None: the backup reads them"
    )


class GuestScripts(BaseModel):
    """The commands run in one VM's guest around its snapshot (VMware Tools guest operations)."""

    model_config = ConfigDict(extra="forbid")

    pre_freeze: str | None = Field(None, description="command run in the guest before")
    post_thaw: str | None = Field(None, description="command run in the guest after")
    post_backup: str | None = Field(
        None, description="command run in the guest once the restore point is committed"
    )


class BackupVmsSpec(VmBackupOptions):
    """Back up every VM a selection matches (names, patterns, folder, host, cluster, tag)."""

    names: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    folder: str | None = Field(
        None,
        description="VM folder path prefix (Prod or /DC1/vm/Prod); a vApp's path (Prod/app1) "
        "takes the vApp's VMs",
    )
    host: str | None = None
    cluster: str | None = None
    tag: str | None = Field(
        None,
        description="vSphere tag CATEGORY:TAG (or TAG) from the vAPI tagging service; "
        "a tag attached to no VM fails the run",
    )
    max_parallel: int = Field(4, ge=1, le=64)
    exclude: list[str] = Field(
        default_factory=list,
        description="VMs never backed up by this run although selected: names, instanceUuids "
        "or glob patterns",
    )
    exclude_tag: str | None = Field(
        None, description="vSphere tag CATEGORY:TAG (or TAG): VMs carrying it are never backed "
        "up by this run (an unknown tag is an error; a tag on no VM leaves nothing out)"
    )
    guest_scripts: dict[str, GuestScripts] = Field(
        default_factory=dict,
        description="VM name, instanceUuid or glob pattern -> its pre-freeze/post-thaw "
        "commands; a VM's name or instanceUuid first, else the first pattern that matches",
    )
    guest_user: str | None = Field(None, description="guest OS user for the scripts")
    guest_password_file: str | None = Field(None, description="its password, in a file")
    stop_after: str | None = Field(
        None, description="backup window: no VM backup or retry starts later than this after "
        "the run began (5h, 90m); VMs not started are failures (vmkeep/jobs/backup_window.py)"
    )

    @field_validator("stop_after", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # a deployment's unset Prefect variable renders as ""
        from vmkeep.storage.retention import parse_duration

        parse_duration(str(value))  # ValueError: a clear spec error
        return str(value)

    @field_validator("guest_scripts", mode="before")
    @classmethod
    def _no_scripts(cls, value: Any) -> Any:
        # A deployment's unset Prefect variable renders as "" (or null): no scripts.
        return {} if value is None or (isinstance(value, str) and not value.strip()) else value

    def scripts_for(self, name: str, instance_uuid: str) -> GuestScripts | None:
        """The scripts of a VM: by its name or instanceUuid, else the first matching pattern."""
        import fnmatch

        for key in (name, instance_uuid):
            if key in self.guest_scripts:
                return self.guest_scripts[key]
        for pattern, scripts in self.guest_scripts.items():
            if fnmatch.fnmatchcase(name, pattern):
                return scripts
        return None

    @field_validator("exclude", mode="before")
    @classmethod
    def _no_exclusions(cls, value: Any) -> Any:
        # A deployment's unset Prefect variable renders as "" (or null): no exclusions.
        return [] if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("tag", "exclude_tag", mode="before")
    @classmethod
    def _blank_tag_is_none(cls, value: Any) -> Any:
        # A deployment's unset Prefect variable renders as "": no tag selection.
        return None if isinstance(value, str) and not value.strip() else value

    def selection(self) -> str:
        """Every selection given, as ``key=value`` (``everything`` when none)."""
        chosen = self._given("names", "patterns", *self.FILTERS) or "everything"
        return chosen + (f", exclude={self.exclude}" if self.exclude else "") + (
            f", exclude_tag={self.exclude_tag}" if self.exclude_tag else "")

    def filters(self) -> str:
        """The selections that narrow what names and patterns match (``""`` when none)."""
        return self._given(*self.FILTERS)

    FILTERS: ClassVar[tuple[str, ...]] = ("folder", "host", "cluster", "tag")

    def _given(self, *keys: str) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in keys if getattr(self, k))

    def for_vm(self, vm: str, name: str = "", tags: list[str] | None = None) -> BackupVmSpec:
        """The one-VM spec of a selected VM (by instanceUuid; ``name`` picks its guest
        scripts), licence already checked, its vSphere ``tags`` as the run read them."""
        shared = self.model_dump(include=set(VmBackupOptions.model_fields) - {"retries"})
        scripts = self.scripts_for(name, vm) if name else None
        return BackupVmSpec(  # the run retries, not the child
            **shared, vm=vm, licence_checked=True,
            pre_freeze=scripts.pre_freeze if scripts else None,
            post_thaw=scripts.post_thaw if scripts else None,
            post_backup=scripts.post_backup if scripts else None,
            guest_user=self.guest_user, guest_password_file=self.guest_password_file,
            vm_tags=tags,
        )


def point_name(value: str) -> str:
    """A restore point name a user chose (``--name``): any text but blanks alone (listed as
    nothing), a control character (a newline or tab: listings and references could not show it)
    or a name that reads as a reference (``latest``, ``…@latest``: the newest point)."""
    if not value.strip():
        raise ValueError("is blank: listings would show no name")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("holds a control character (a newline, a tab): listings and "
                         "references could not show it")
    if value == "latest" or value.endswith("@latest"):
        raise ValueError("'latest' and a trailing '@latest' name the newest point in a "
                         "reference (NAME@latest): choose another name")
    return value


class BackupImageSpec(Spec):
    """Back up a disk image file (raw or VMDK)."""

    repo: str = Field(min_length=1)
    path: str = Field(min_length=1, description="image file")
    name: str = Field(min_length=1, description="restore point name")
    changed_extents: list[tuple[int, int]] | None = None
    storage_options: dict[str, Any] | None = None
    exclude_swap: bool = Field(False, description="record the guest's swap as zeros unread")
    exclude_deleted: bool = Field(
        False, description="record the free blocks of NTFS, ext2/3/4, XFS and Btrfs volumes as "
        "zeros unread (the image must be at rest)"
    )

    _name = field_validator("name")(point_name)

    @classmethod
    def of(cls, changed: Sequence[Sequence[int]] | None = None, **kw: Any) -> BackupImageSpec:
        extents = [(int(a), int(b)) for a, b in changed] if changed is not None else None
        return cls(changed_extents=extents, **kw)


class BackupFilesSpec(Spec):
    """File-level (incremental) backup of one guest tree."""

    repo: str = Field(min_length=1)
    source: str = Field(min_length=1, description="local path or sftp:// / smb:// URL")
    name: str = Field(min_length=1, description="restore point name")
    excludes: list[str] = Field(default_factory=list)
    one_file_system: bool = False
    exclude_caches: bool = True
    client: str | None = Field(None, description="label shown in listings (not licensed)")
    storage_options: dict[str, Any] | None = Field(
        None, description="non-secret fsspec options of the repository"
    )
    source_options: dict[str, Any] | None = Field(
        None, description="non-secret fsspec options of the source"
    )
    source_password_file: str | None = Field(
        None, description="file on the worker holding the source password"
    )
    source_password_block: str | None = Field(
        None, description="Prefect Secret block holding the source password"
    )
    workers: int | None = None
    fail_on_partial: bool = False

    _name = field_validator("name")(point_name)

    @model_validator(mode="before")
    @classmethod
    def _none_lists(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("excludes") is None:
            data = {k: v for k, v in data.items() if k != "excludes"}
        return data


class InvalidSpec(InputError):
    """Invalid {}: {}"""

    #: ``(field, problem)`` per bad field, when :func:`build` raised it (the CLI names options)
    problems: tuple[tuple[str, str], ...] = ()


S = TypeVar("S", bound=Spec)


def build(spec_type: type[S], params: dict[str, Any]) -> S:
    """``spec_type`` from keywords, or :class:`InvalidSpec` naming each bad field (exit 14)."""
    try:
        return spec_type.model_validate(params)
    except ValidationError as exc:
        problems = tuple(
            (".".join(map(str, e["loc"])) or "spec", _problem(e)) for e in exc.errors()
        )
        error = InvalidSpec(spec_type.__name__, "; ".join(f"{f}: {p}" for f, p in problems))
        error.problems = problems
        raise error from None


def require_utf8(spec: Spec) -> None:
    """:class:`InvalidSpec` naming the first field of ``spec`` holding text that is not UTF-8
    (a path with bytes kept by ``surrogateescape``): an orchestrated run sends its spec to
    Prefect's API as JSON, which cannot carry it — a direct run can."""

    def walk(value: Any, where: str) -> str | None:
        if isinstance(value, str):
            return None if is_utf8(value) else where
        if isinstance(value, dict):
            for key, item in value.items():
                if (found := walk(key, where) or walk(item, f"{where}.{key}")) is not None:
                    return found
        elif isinstance(value, (list, tuple)):
            for item in value:
                if (found := walk(item, where)) is not None:
                    return found
        return None

    for name, value in spec.model_dump().items():
        if (field := walk(value, name)) is not None:
            raise InvalidSpec(type(spec).__name__, f"{field}: " + _not_utf8(
                "run it without PREFECT_API_URL, or choose a folder above that name"))


def _not_utf8(remedy: str) -> str:
    return f"not valid UTF-8 text (a job's options travel as JSON: {remedy})"


def _problem(error: Any) -> str:
    """Pydantic's message for one field, or ours where it speaks of its own internals."""
    if error["type"] == "string_unicode":  # a path or name with bytes that are not UTF-8
        return _not_utf8("give a path or name whose bytes are UTF-8")
    return str(error["msg"]).removeprefix("Value error, ")  # our validators' own words


class SweepSpec(_WithTarget):
    """Remove vmkeep snapshots that outlived their run."""

    older_than_minutes: float = Field(60.0, ge=0, le=limits.MAX_LEFTOVER_AGE_MIN)
    active_runs: list[str] | None = Field(
        None, description="run ids still running (default: what the orchestrator reports)"
    )
