"""``vmkeep restore vm POINT --vcenter URL [--name NEW] [--host H] [--datastore DS] …``.

Recreates a whole VM from a VM restore point: its saved configuration (firmware, NVRAM,
settings), then its disks' content — by default through an NFC import lease (any datastore
type; thin disks stay thin), or ``--transport https`` (HTTP PUT of the flat file, VMFS/NFS) or
``--transport direct`` into NFS datastores mounted here with ``--datastore-mount NAME=PATH``.
Never overwrites an existing VM unless ``--overwrite``.  ``--quick-rollback`` instead rolls the
original VM back in place (:mod:`vmkeep.jobs.quick_rollback`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    emit_json,
    human_bytes,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import restore_app
from vmkeep.cli.restore_opts import YaraOpt, run_restore, yara_rules
from vmkeep.cli.vcenter_opts import (
    NO_VCENTER,
    ConnectNetworksOpt,
    DatastoreMountOpt,
    DiskFormatOpt,
    NetworkMapOpt,
    ResourcePoolOpt,
    need_disk_format,
    need_vcenter,
    parse_datastore_mounts,
    parse_network_map,
    vcenter_options,
)
from vmkeep.errors import UsageError
from vmkeep.vsphere.target import VCenterTarget


@restore_app.command("vm")
@vcenter_options
def restore_vm_cmd(
    point: Annotated[str, typer.Argument(help="VM restore point: id, prefix or NAME@latest.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the new VM.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Target ESXi host.")] = None,
    datastore: Annotated[str | None, typer.Option("--datastore", help="Target datastore.")] = None,
    folder: Annotated[str | None, typer.Option(
        "--folder", help="VM folder (path; default: the VM's folder as backed up).")] = None,
    resource_pool: ResourcePoolOpt = None,
    power_on: Annotated[bool, typer.Option("--power-on", help="Power the VM on.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing VM of that name (set aside until the new one is "
            "complete; put back if the restore fails).",
        ),
    ] = False,
    transport: Annotated[
        str,
        typer.Option(
            "--transport",
            help="nfc (any datastore), https or direct (VMFS/NFS).  With --quick-rollback: "
            "direct (NFS datastores mounted here; the default with --datastore-mount) or hotadd "
            "(the disks attached to the mover VM vmkeep runs in; the default otherwise).",
        ),
    ] = "nfc",
    keep_identity: Annotated[
        bool,
        typer.Option(
            "--keep-identity", help="Keep BIOS/instance UUIDs and MACs (disaster recovery)."
        ),
    ] = False,
    network: NetworkMapOpt = None,
    connect_networks: ConnectNetworksOpt = False,
    disk_format: DiskFormatOpt = "same",
    tags: Annotated[
        bool | None,
        typer.Option(
            "--tags/--no-tags",
            help="Attach the vSphere tags the VM carried at backup (those that exist here, by "
            "CATEGORY:TAG).  Default: only when restored under its original name.",
            show_default=False,
        ),
    ] = None,
    drop_excluded_disks: Annotated[
        bool,
        typer.Option(
            "--drop-excluded-disks",
            help="Leave the disks the point does not hold (excluded from the backup, "
            "independent) out of the new VM instead of creating them empty.",
        ),
    ] = False,
    datastore_mount: DatastoreMountOpt = None,
    quick_rollback: Annotated[
        bool,
        typer.Option(
            "--quick-rollback",
            help="Roll the original VM back in place instead: write only the blocks changed "
            "since the point (CBT), through its NFS datastores mounted here (--datastore-mount) "
            "or its disks hot-added to this mover VM.  The VM must be powered off, without "
            "snapshots.",
        ),
    ] = False,
    mover: Annotated[
        str | None,
        typer.Option(help="The mover VM vmkeep runs in (name or BIOS UUID), for hotadd."),
    ] = None,
    yara: YaraOpt = None,
    power_off: Annotated[
        bool,
        typer.Option(
            "--power-off",
            help="With --quick-rollback: power the VM off first if it runs (hard; what the guest "
            "had not written is lost).",
        ),
    ] = False,
    vc: VCenterTarget = NO_VCENTER,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Recreate a whole VM (configuration and disks) from a VM restore point."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    if transport not in ("nfc", "https", "direct", "hotadd"):
        raise UsageError("--transport must be nfc, https, direct or hotadd (quick rollback)")
    need_disk_format(disk_format)
    params: dict[str, Any] = {
        "repo": repo_url,
        "point": point,
        "name": name,
        "host": host,
        "datastore": datastore,
        "folder": folder,
        "resource_pool": resource_pool,
        "power_on_after": power_on,
        "overwrite": overwrite,
        "transport": transport,
        "keep_identity": keep_identity,
        "networks": parse_network_map(network) or None,
        "connect_networks": connect_networks,
        "disk_format": disk_format,
        "drop_excluded_disks": drop_excluded_disks,
        "restore_tags": tags,
        "datastore_mounts": parse_datastore_mounts(datastore_mount),
        "quick_rollback": quick_rollback,
        "mover": mover,
        "power_off_first": power_off,
        "yara_rules": yara_rules(yara),
        "vcenter": need_vcenter(vc, "restore vm"),
    }
    summary = run_restore("restore_vm", params, orchestrate, "restoring VM disks", json_out)
    if json_out:
        emit_json(summary)
        return
    if quick_rollback:
        _print_rollback(summary)
        return
    total = sum(d["bytes"] for d in summary["disks"])
    console_err.print(
        f"restored VM {summary['vm']} on {summary['host']} / {summary['datastore']}: "
        f"{len(summary['disks'])} disk(s), {human_bytes(total)} in {summary['duration_s']:.1f} s "
        f"({summary['power_state']})",
        markup=False,
    )
    for w in summary["warnings"]:
        console_err.print(f"warning: {w}", markup=False)


def _print_rollback(summary: dict[str, Any]) -> None:
    for d in summary["disks"]:
        console_err.print(
            f"{d['label']}: {d['method']}, {human_bytes(d['bytes_checked'])} checked, "
            f"{human_bytes(d['bytes_written'])} written ({d['reason']})",
            markup=False,
        )
    console_err.print(
        f"rolled VM {summary['vm']} back to {summary['point'][:8]} ({summary['transport']}): "
        f"{human_bytes(summary['bytes_written'])} written in {summary['duration_s']:.1f} s; "
        f"CBT reset {summary['cbt_resets']}x, the next backup reads its disks whole "
        f"({summary['power_state']})",
        markup=False,
    )
    for w in summary["warnings"]:
        console_err.print(f"warning: {w}", markup=False)
