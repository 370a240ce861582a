"""``vmkeep restore disk POINT --disk N --vcenter URL --vm TARGET [--datastore DS]
[--disk-format FORMAT]``.

Restores one disk of a restore point through an NFC import lease (any datastore type; thin,
thick or eagerly zeroed as backed up, or as ``--disk-format`` says) and attaches it to the
existing VM ``TARGET`` — running or not — e.g. to copy files off it inside that VM.  The VM is
otherwise untouched.
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
    DiskFormatOpt,
    need_disk_format,
    need_vcenter,
    vcenter_options,
)
from vmkeep.errors import UsageError
from vmkeep.vsphere.target import VCenterTarget


@restore_app.command("disk")
@vcenter_options
def restore_disk_cmd(
    point: Annotated[str, typer.Argument(help="Restore point: id, prefix or NAME@latest.")],
    disk: Annotated[int, typer.Option("--disk", help="Disk index in the point (0 = first).")],
    vm: Annotated[str, typer.Option("--vm", help="Existing VM to attach the disk to: its name, "
                                                 "or instance UUID if others share the name.")],
    datastore: Annotated[
        str | None, typer.Option("--datastore", help="Datastore (default: the VM's).")
    ] = None,
    disk_format: DiskFormatOpt = "same",
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Put the disk in the place of the VM's disk at the device node it was backed "
            "up from (scsi0:1): the VM powered off, without snapshots; the replaced disk's file "
            "is kept.",
        ),
    ] = False,
    yara: YaraOpt = None,
    vc: VCenterTarget = NO_VCENTER,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Restore one disk of a point (through NFC) and attach it to an existing VM."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    target = need_vcenter(vc, "restore disk")
    if disk < 0:
        raise UsageError("--disk must be 0 or more")
    params: dict[str, Any] = {
        "repo": repo_url, "point": point, "disk": disk, "vm": vm, "datastore": datastore,
        "disk_format": need_disk_format(disk_format), "vcenter": target, "replace": replace,
        "yara_rules": yara_rules(yara),
    }
    summary = run_restore("restore_disk", params, orchestrate, "restoring disk", json_out)
    if json_out:
        emit_json(summary)
        return
    console_err.print(
        f"restored disk {summary['disk']} ({human_bytes(summary['capacity'])}, "
        f"{human_bytes(summary['bytes_sent'])} sent) as {summary['attached']['file_name']} on "
        f"VM {summary['vm']} in {summary['duration_s']:.1f} s",
        markup=False,
    )
    if summary["attached"].get("replaced"):
        console_err.print(
            f"replaced {summary['attached']['replaced']}: kept — delete it once the restore is "
            "verified", markup=False,
        )
