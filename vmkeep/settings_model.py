"""The table of vmkeep's settings: one field per ``VMKEEP_*`` variable (see :mod:`vmkeep.settings`).

Kept apart from :mod:`vmkeep.settings` so that reading no setting costs no pydantic import
(``vmkeep --help`` and usage errors start without it); :func:`vmkeep.settings.settings` imports
this module on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr


def _var(description: str, default: Any = None, **constraints: Any) -> Any:
    return Field(default=default, description=description, **constraints)


class Settings(BaseModel):
    """Every ``VMKEEP_*`` variable (field ``x`` ↔ ``VMKEEP_X``); see ``docs/settings.md``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- repository -------------------------------------------------------------------------------
    repo: str | None = _var("repository URL or path (`--repo`)")
    password: SecretStr | None = _var("repository password")
    password_file: Path | None = _var("file whose first line is the repository password")
    password_command: str | None = _var("shell command printing the repository password")
    from_password: SecretStr | None = _var("password of the source repository of `copy`")
    from_password_file: Path | None = _var(
        "file whose first line is the source repository's password (`copy`)")
    from_password_command: str | None = _var(
        "shell command printing the source repository's password (`copy`)")
    from_repo: str | None = _var("source repository URL or path of `copy` (`--from-repo`)")
    new_password: SecretStr | None = _var("new password for `key add`")
    new_password_file: Path | None = _var("file holding the new password for `key add`")
    state_dir: Path | None = _var(
        "client state (known repository states, licence ledger); default "
        "`$XDG_STATE_HOME/vmkeep` or `~/.local/state/vmkeep`")
    lock_wait: float | None = _var(
        "seconds to wait for a repository lock (default: 300 for shared/read locks, 0 for "
        "exclusive ones)", ge=0)
    lock_refresh: float | None = _var(
        "seconds between lock refreshes (default: a sixth of the staleness limit)", gt=0)
    target_timeout: float = _var(
        "seconds a network target may stall mid-transfer before the attempt is retried",
        120.0, ge=1)
    limit_upload: int | None = _var(
        "upload limit to repository targets in KiB/s, shared by a process's transfers "
        "(`--limit-upload`)", gt=0)
    limit_download: int | None = _var(
        "download limit from repository targets in KiB/s, shared by a process's transfers "
        "(`--limit-download`)", gt=0)
    limit_read: int | None = _var(
        "read limit in KiB/s for the disks being backed up (VM disks over any transport, "
        "`backup image` sources), shared by a process's disks (`--limit-read`)", gt=0)
    change_warn_factor: float = _var(
        "warn when a backup adds more than this many times the median new data of its last "
        "incrementals, or new data that suddenly does not compress (0: never)", 5.0, ge=0)
    change_warn_min_mib: int = _var(
        "…but only when it adds at least this many MiB of new data", 1024, ge=0)
    repo_warn_free_percent: float = _var(
        "warn (summary, restore point, job report) when a backup's repository target has less "
        "free space than this percentage (local, NFS, SMB targets; 0: never)", 10.0, ge=0,
        le=100)
    direct_io: bool = _var(
        "`0`: write packs buffered, not with O_DIRECT, on local ext4/XFS/Btrfs", True)

    # -- vSphere ----------------------------------------------------------------------------------
    vcenter: str | None = _var("vCenter or ESXi URL/host (`--vcenter`)")
    vc_user: str | None = _var("vSphere user (`--user`)")
    vc_password: SecretStr | None = _var("vSphere password")
    vc_password_file: Path | None = _var("file whose first line is the vSphere password")
    vc_cafile: Path | None = _var("CA bundle (PEM) for vCenter (`--cafile`)")
    vc_thumbprint: str | None = _var(
        "SHA-256 thumbprint pinning vCenter's certificate (`--thumbprint`)")
    guest_user: str | None = _var("guest OS user for guest operations")
    guest_password: SecretStr | None = _var("guest OS password")
    guest_password_file: Path | None = _var("file whose first line is the guest OS password")
    mover: str | None = _var(
        "name of the data mover VM for hot-add (default: the VM this process runs in, by its "
        "DMI UUID)")
    hotadd_device_dir: Path | None = _var(
        "where hot-added disks appear (default `/dev/disk/by-id`)")
    vm_attribute: str | None = _var(
        "custom attribute a VM backup writes its result into (`Last backup`; unset: none; "
        "needs Global.ManageCustomFields once, Global.SetCustomField)")
    datastore_warn_free_percent: float = _var(
        "warn when a datastore a VM's snapshot grows on has less free space than this percentage "
        "of its capacity (0: never)", 10.0, ge=0, le=100)
    datastore_skip_free_percent: float = _var(
        "skip a VM (no snapshot) when a datastore its snapshot grows on has less free space than "
        "this percentage of its capacity (0: never)", 5.0, ge=0, le=100)
    datastore_latency_stop_ms: float = _var(
        "start no VM snapshot while a datastore it grows on answers this slowly or slower on the "
        "VM's host, in ms (vCenter's realtime latency counters; 0: never wait)", 20.0, ge=0)
    datastore_latency_wait_s: float = _var(
        "wait at most this long for a busy datastore, in seconds; then back the VM up anyway, "
        "with a warning", 1800.0, ge=0)
    datastore_latency_poll_s: float = _var(
        "look at a busy datastore's latency again after this many seconds (also while a VM's "
        "disks are read)", 30.0, gt=0)
    datastore_latency_throttle_ms: float = _var(
        "while a VM's disks are read, slow the reads down while a datastore they come from "
        "answers this slowly or slower on the VM's host, in ms (0: never)", 30.0, ge=0)
    datastore_latency_floor_kib: int = _var(
        "the slowest a throttled VM backup reads, in KiB/s", 10240, gt=0)

    # -- file sources -----------------------------------------------------------------------------
    source_password: SecretStr | None = _var("password of an `sftp://` / `smb://` file source")
    source_password_file: Path | None = _var("file whose first line is the source password")
    source_key_file: str | None = _var("SSH private key for `sftp://` sources")

    # -- licences, tape, orchestration ------------------------------------------------------------
    config_dir: Path | None = _var(
        "configuration directory (licence, tape libraries); default `$XDG_CONFIG_HOME/vmkeep` "
        "or `~/.config/vmkeep`")
    license: Path | None = _var("licence file (default in `VMKEEP_CONFIG_DIR`)")
    tape_dir: Path | None = _var("tape library definitions (default `VMKEEP_CONFIG_DIR/tape`)")
    tape_library: str | None = _var("tape library name (`--library`)")
    tape_queued_writes: int = _var(
        "WRITE commands a tape copy keeps queued at an iSCSI drive (`1`: one at a time, for a "
        "target that does not execute SIMPLE tasks in order)", 2, ge=1, le=8)

    # -- notifications ----------------------------------------------------------------------------
    notify: SecretStr | None = _var(
        "where job reports go: Apprise URLs (`mailto://`, `json://`, `slack://` …), separated by "
        "spaces or newlines")
    notify_file: Path | None = _var("file of Apprise URLs for job reports, one per line")
    notify_on: str | None = _var(
        "which job reports are sent: a comma list of `failure`, `warning`, `success` (default "
        "`failure,warning`)")

    # -- the ESX lab and tests --------------------------------------------------------------------
    lab_dir: Path | None = _var("the ESX lab's working directory")
    lab_cache: Path | None = _var("the ESX lab's build cache")
    test_crash_at: str | None = _var(
        "test only: `STEP:N` kills the process at the N-th crash point STEP")
    test_crash_marker: str | None = _var("test only: file created just before the test crash")

    def secret(self, name: str) -> str | None:
        """The value of secret field ``name`` (``"vc_password"``), or ``None``."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value
