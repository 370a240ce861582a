"""``vmkeep instant-restore POINT --vcenter URL --host H [--name NEW]``, ``instant-restore disk
POINT --vm VM [--disk N]`` and their follow-ups.

``instant-restore POINT`` runs the VM of a restore point straight from the repository (an NFS
export served by nfs-ganesha on this machine, mounted on the host as a NAS datastore) and powers
it on; ``instant-restore finalize RUN --datastore DS`` moves it to production storage (storage
vMotion) and removes the export; ``instant-restore cancel RUN`` powers it off, unregisters it and
removes the export; ``instant-restore list`` shows the runs this machine knows
(:mod:`vmkeep.browse.instant`).  ``instant-restore disk POINT --vm VM`` attaches disks of a point
to an existing VM from the same kind of export; finalize moves those disks alone, cancel detaches
them (:mod:`vmkeep.browse.instant_disks`).  The export runs in a background process on this
machine until finalize or cancel.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import typer
from typer._click.core import Context  # typer vendors click
from typer.core import TyperGroup

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    console_out,
    emit_json,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.cli.option_groups import option_group
from vmkeep.cli.restore_opts import YaraOpt, yara_rules
from vmkeep.cli.vcenter_opts import (
    NO_VCENTER,
    ConnectNetworksOpt,
    NetworkMapOpt,
    ResourcePoolOpt,
    need_vcenter,
    parse_network_map,
    vcenter_options,
)
from vmkeep.errors import UsageError
from vmkeep.vsphere.target import VCenterTarget

SUBCOMMANDS = ("start", "disk", "finalize", "cancel", "list")


class DefaultToStart(TyperGroup):
    """``instant-restore POINT …`` means ``instant-restore start POINT …``."""

    #: the subcommand a first word that is none of :data:`SUBCOMMANDS` goes to
    default_command = "start"

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in SUBCOMMANDS and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return list(super().parse_args(ctx, args))


instant_app = typer.Typer(
    cls=DefaultToStart, no_args_is_help=True,
    help="Run a VM (or attach its disks to a VM) straight from a restore point, then move it to "
    "production storage.",
)
app.add_typer(instant_app, name="instant-restore")


def _run(action: str, vc: VCenterTarget, **fields: Any) -> dict[str, Any]:
    """Run the instant-restore job (:mod:`vmkeep.jobs.instant_restore`) for ``action`` in this
    process: the export it starts is served from this machine, where finalize/cancel find it."""
    target = need_vcenter(vc, "instant-restore")
    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.instant_restore import InstantRestoreSpec, instant_restore

    record: dict[str, Any] = run_job(
        instant_restore, InstantRestoreSpec, False, action=action, vcenter=target, **fields
    )
    return record


def _follow_up(action: str, run: str, vc: VCenterTarget, **fields: Any) -> dict[str, Any]:
    """Run ``action`` on run ``run`` of this machine; its vCenter unless ``--vcenter`` names one."""
    from vmkeep.browse import instant_runs

    saved = instant_runs.load(run)
    vc = replace(vc, url=vc.url or saved["vcenter"])
    return _run(action, vc, run=run, **fields)


RunArg = Annotated[str, typer.Argument(help="Run id (ir-…) from `instant-restore list`.")]
NfsAddressOpt = Annotated[
    str, typer.Option("--nfs-address", help="Address the ESXi host reaches this machine at.")
]
ListenOpt = Annotated[
    str, typer.Option("--listen", help="Address the NFS server binds (default: --nfs-address).")
]
NfsPortOpt = Annotated[
    int, typer.Option("--nfs-port", help="NFS port (ESXi uses 2049; 0: a free port, lab only).")
]
NfsClientOpt = Annotated[
    list[str] | None,
    typer.Option("--nfs-client", help="Address/network allowed to mount the export "
                 "(repeatable; default: the host's VMkernel addresses)."),
]


def _nfs_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The export's spec fields from the ``--nfs-*``/``--listen`` options."""
    if not 0 <= values["nfs_port"] < 65536:
        raise UsageError("--nfs-port must be 0..65535")
    return {"nfs_address": values["nfs_address"],
            "listen": values["listen"] or values["nfs_address"], "nfs_port": values["nfs_port"],
            "nfs_clients": values["nfs_client"] or None}


#: the default of a command's ``nfs`` parameter (never handed to it: it gets the options' fields)
NO_NFS: dict[str, Any] = {}
#: Give a command the NFS export options where it declares ``nfs: dict[str, Any] = NO_NFS``:
#: the spec fields ``nfs_address``, ``listen``, ``nfs_port``, ``nfs_clients``.
nfs_options = option_group("nfs", lambda _param: [
    ("nfs_address", NfsAddressOpt, "127.0.0.1"),
    ("listen", ListenOpt, ""),
    ("nfs_port", NfsPortOpt, 2049),
    ("nfs_client", NfsClientOpt, None),
], _nfs_fields)


@instant_app.command("start")
@vcenter_options
@nfs_options
def start_cmd(
    point: Annotated[str, typer.Argument(help="VM restore point: id, prefix or NAME@latest.")],
    host: Annotated[str, typer.Option("--host", help="ESXi host to run the VM on.")],
    vc: VCenterTarget = NO_VCENTER,
    name: Annotated[str | None, typer.Option("--name", help="Name of the new VM.")] = None,
    folder: Annotated[str | None, typer.Option(
        "--folder", help="VM folder (path; default: the VM's folder as backed up).")] = None,
    resource_pool: ResourcePoolOpt = None,
    network: NetworkMapOpt = None,
    connect_networks: ConnectNetworksOpt = False,
    nfs: dict[str, Any] = NO_NFS,
    yara: YaraOpt = None,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run the VM of a restore point from an NFS export of the repository and power it on."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    record = _run(
        "start", vc, repo=repo_url, point=point, host=host, name=name, folder=folder,
        resource_pool=resource_pool,
        networks=parse_network_map(network) or None, connect_networks=connect_networks,
        yara_rules=yara_rules(yara), **nfs,
    )
    if json_out:
        emit_json(record)
        return
    console_err.print(
        f"instant restore {record['id']}: VM {record['vm']} running on {record['host']} from "
        f"datastore {record['datastore']} ({record['powered_on_s']:.1f} s); move it with "
        f"`vmkeep instant-restore finalize {record['id']} --datastore DS`",
        markup=False,
    )


@instant_app.command("disk")
@vcenter_options
@nfs_options
def disk_cmd(
    point: Annotated[str, typer.Argument(help="VM or image restore point: id, prefix or "
                                               "NAME@latest.")],
    vm: Annotated[str, typer.Option("--vm", help="Existing VM to attach the disks to (it may "
                                                 "be running): its name, or instance UUID if "
                                                 "others share the name.")],
    disk: Annotated[
        list[str] | None,
        typer.Option("--disk", help="Disk of the point: index, device node (scsi0:1) or label "
                     "(repeatable; default: every disk)."),
    ] = None,
    vc: VCenterTarget = NO_VCENTER,
    nfs: dict[str, Any] = NO_NFS,
    yara: YaraOpt = None,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Attach disks of a restore point to a VM straight from an NFS export of the repository."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    record = _run("disk", vc, repo=repo_url, point=point, vm=vm, disks=list(disk or []),
                  yara_rules=yara_rules(yara), **nfs)
    if json_out:
        emit_json(record)
        return
    nodes = ", ".join(f"disk {d['index']} at {d['node']}" for d in record["disks"])
    console_err.print(
        f"instant disk recovery {record['id']}: {nodes} of VM {record['vm']} served from "
        f"datastore {record['datastore']} ({record['attached_s']:.1f} s); move them with "
        f"`vmkeep instant-restore finalize {record['id']} --datastore DS`",
        markup=False,
    )


@instant_app.command("finalize")
@vcenter_options
def finalize_cmd(
    run: RunArg,
    datastore: Annotated[str, typer.Option("--datastore", help="Production datastore.")],
    vc: VCenterTarget = NO_VCENTER,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Move the running VM (or the attached disks) to a production datastore, then remove the
    export."""
    setup_logging(verbose)
    record = _follow_up("finalize", run, vc, datastore=datastore)
    if json_out:
        emit_json(record)
        return
    what = (f"{len(record['disks'])} disk(s) of VM {record['vm']}"
            if record.get("kind") == "disks" else f"VM {record['vm']}")
    console_err.print(
        f"instant restore {record['id']}: {what} now on {datastore} "
        f"({record['finalize_s']:.1f} s); export removed", markup=False,
    )


@instant_app.command("cancel")
@vcenter_options
def cancel_cmd(
    run: RunArg,
    vc: VCenterTarget = NO_VCENTER,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Power the VM off, unregister it and remove the export (its changes are discarded); of
    an instant disk recovery, detach the disks (the VM stays)."""
    setup_logging(verbose)
    record = _follow_up("cancel", run, vc)
    if json_out:
        emit_json(record)
        return
    what = ("disks detached from VM" if record.get("kind") == "disks"
            else "VM unregistered,")
    console_err.print(f"instant restore {record['id']} cancelled: {what} {record['vm']}"
                      f"{',' if record.get('kind') == 'disks' else ''} export removed",
                      markup=False)


@instant_app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """Instant-restore runs known on this machine."""
    from vmkeep.browse import instant_runs
    from vmkeep.browse.instant_export import alive

    runs = instant_runs.all_runs()
    for r in runs:  # is the export process of a live run still there?
        r["export_alive"] = bool(r.get("supervisor_pid")) and alive(int(r["supervisor_pid"]))
    if json_out:
        emit_json({"runs": runs})
        return
    for r in runs:
        export = ""
        if r["state"] in ("starting", "running"):
            export = "  export up" if r["export_alive"] else "  EXPORT DOWN"
        kind = "disks" if r.get("kind") == "disks" else "vm"
        console_out.print(
            f"{r['id']}  {kind:<5} {r['state']:<10} {r['vm']:<24} {r['point'][:8]}  "
            f"{r['host']}  {r.get('finalized_to') or r['datastore']}{export}", markup=False,
        )
    console_err.print(f"{len(runs)} instant-restore run(s) on this machine", markup=False)
