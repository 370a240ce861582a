"""``vmkeep backup vm NAME…``: agentless image backups of running VMs through vCenter/ESXi."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    byte_progress,
    console_err,
    emit_json,
    human_bytes,
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import backup_app
from vmkeep.cli.spec_options import spec_from_options
from vmkeep.cli.vcenter_opts import (
    DatastoreMountOpt,
    need_vcenter,
    parse_datastore_mounts,
    vcenter_options,
)
from vmkeep.errors import UsageError
from vmkeep.vsphere.target import VCenterTarget


@backup_app.command("vm")
@vcenter_options
def backup_vm_cmd(
    vc: VCenterTarget,
    vms: Annotated[
        list[str] | None,
        typer.Argument(help="VM names, instanceUuids or glob patterns (optional with --tag)."),
    ] = None,
    transport: Annotated[
        str,
        typer.Option(
            help="auto (per disk: hotadd when running in a mover VM whose host mounts the "
            "datastore, else https for VMFS/NFS, nfc for vSAN/vVol), https (datastore HTTP), nfc "
            "(NFC export lease, any datastore), hotadd (attach the snapshot's disks to the mover "
            "VM) or direct (LAN-free mounts)."
        ),
    ] = "auto",
    mover: Annotated[
        str | None,
        typer.Option(help="The mover VM vmkeep runs in (name or BIOS UUID) for hotadd/auto."),
    ] = None,
    allow_vmfs_mount: Annotated[
        bool,
        typer.Option(
            "--allow-vmfs-mount",
            help="Let --transport direct read a VMFS datastore mounted through vmfs-tools "
            "(experimental on VMFS6; refused by default).",
        ),
    ] = False,
    datastore_mount: DatastoreMountOpt = None,
    remote_device: Annotated[
        str | None, typer.Option(help="This data mover's name when moving data LAN-free (SRD).")
    ] = None,
    quiesce: Annotated[bool, typer.Option("--quiesce/--no-quiesce")] = True,
    quiesce_policy: Annotated[
        str, typer.Option(help="On quiesce failure: fail, or crash-consistent.")
    ] = "fail",
    pre_freeze: Annotated[
        str | None,
        typer.Option(help="Command run in the guest first (in each guest, with several VMs)."),
    ] = None,
    post_thaw: Annotated[
        str | None, typer.Option(help="Command run in the guest after the snapshot.")
    ] = None,
    post_backup: Annotated[
        str | None,
        typer.Option(
            help="Command run in the guest once the restore point is committed, and only then "
            "(e.g. truncate database logs); not after a crash-consistent point; a failure is a "
            "warning."
        ),
    ] = None,
    guest_password_file: Annotated[str | None, typer.Option()] = None,
    enable_cbt: Annotated[
        bool,
        typer.Option(
            "--enable-cbt/--no-enable-cbt",
            help="Turn changed-block tracking on where it is off and supported (default).",
        ),
    ] = True,
    scan_every: Annotated[
        int,
        typer.Option(help="Read a disk whole every N-th CBT incremental (0: never)."),
    ] = 30,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="An active full: read every disk whole this run, whatever CBT says (unchanged "
            "data is still stored once).",
        ),
    ] = False,
    exclude_swap: Annotated[
        bool,
        typer.Option(
            "--exclude-swap",
            help="Record the guests' swap as zeros instead of reading it (Linux swap partitions, "
            "LVs, swap files in fstab; Windows pagefile.sys, swapfile.sys, hiberfil.sys).",
        ),
    ] = False,
    exclude_deleted: Annotated[
        bool,
        typer.Option(
            "--exclude-deleted",
            help="Record the free blocks of the guests' NTFS, ext2/3/4, XFS and Btrfs volumes "
            "(deleted data) as zeros instead of reading them (Veeam's BitLooker); from quiesced "
            "snapshots or VMs not running only.",
        ),
    ] = False,
    cbt_audit: Annotated[
        str,
        typer.Option(
            help="CBT truth audit on incrementals: off, or the percent of chunks sampled."
        ),
    ] = "0.5",
    parallel: Annotated[
        int, typer.Option(min=1, max=64, help="VM backups at once (several VMs).")
    ] = 4,
    retries: Annotated[
        int,
        typer.Option(
            min=0, max=10,
            help="Back up a VM whose backup failed again, up to N times (several VMs: once per "
            "pass, after every VM had its turn).  Not for usage errors, bad input, licence "
            "refusals or VMs not found.",
        ),
    ] = 0,
    retry_wait: Annotated[
        float,
        typer.Option(min=0, max=86400, metavar="SECONDS", help="Pause before each retry."),
    ] = 600.0,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            help="Only VMs carrying this vSphere tag, CATEGORY:TAG (vCenter's tagging service); "
            "a tag on no VM is an error.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="VM",
            help="Leave this VM out although selected: name, instanceUuid or glob pattern "
            "(repeatable).",
        ),
    ] = None,
    exclude_tag: Annotated[
        str | None,
        typer.Option(
            "--exclude-tag",
            metavar="CATEGORY:TAG",
            help="Leave out the VMs carrying this vSphere tag (e.g. backup-policy:none).",
        ),
    ] = None,
    exclude_disk: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-disk",
            metavar="[VM/]DISK",
            help="Do not back up this disk: its node (scsi0:1), label ('Hard disk 2', or a "
            "glob) or key, of every VM or of VM (name, instanceUuid or glob) — repeatable.  "
            "Recorded in the point; a VM restore creates the disk empty.",
        ),
    ] = None,
    stop_after: Annotated[
        str | None,
        typer.Option(
            "--stop-after",
            metavar="DURATION",
            help="Backup window: start no VM backup or retry later than this after the run "
            "began (5h, 90m); VMs not started are reported as failed.  Backups already running "
            "finish.",
        ),
    ] = None,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Back up VMs: quiesce, snapshot, read, dedupe, write, release — incremental with CBT."""
    setup_logging(verbose)
    vms = list(vms or [])
    if not vms and not tag:
        raise UsageError("name the VMs to back up, or select them with --tag CATEGORY:TAG")
    repo_url = require_repo(repo)
    if transport not in ("auto", "https", "direct", "nfc", "hotadd"):
        raise UsageError("--transport must be auto, https, nfc, hotadd or direct")
    if quiesce_policy not in ("fail", "crash-consistent"):
        raise UsageError("--quiesce-policy must be fail or crash-consistent")
    mounts = parse_datastore_mounts(datastore_mount) or None
    if scan_every < 0:
        raise UsageError("--scan-every must be 0 (never) or a positive number of incrementals")
    from vmkeep.storage.cbt_audit import AuditPolicy

    AuditPolicy.parse(cbt_audit)  # a bad value is a usage error before anything starts
    if stop_after:
        from vmkeep.storage.retention import parse_duration

        try:
            parse_duration(stop_after)
        except ValueError as exc:
            raise UsageError(f"--stop-after: {exc}") from None
    if transport == "direct" and not mounts:
        raise UsageError("--transport direct needs --datastore-mount DATASTORE=PATH")
    target = need_vcenter(vc, "backup vm")
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.flows.run import run
    from vmkeep.jobs import specs

    common = dict(
        vcenter=target,
        repo=repo_url,
        transport=transport,
        mover=mover,
        datastore_mounts=mounts,
        allow_vmfs_mount=allow_vmfs_mount,
        remote_device=remote_device,
        quiesce=quiesce,
        quiesce_policy=quiesce_policy,
        enable_cbt=enable_cbt,
        scan_every=scan_every,
        read_whole=full,
        exclude_swap=exclude_swap,
        exclude_deleted=exclude_deleted,
        cbt_audit=cbt_audit,
        retries=retries,
        retry_wait_s=retry_wait,
        exclude_disks=list(exclude_disk or []),
    )
    single = not tag and not exclude and not exclude_tag and not stop_after
    if len(vms) == 1 and single and not any(c in vms[0] for c in "*?["):
        from vmkeep.jobs.backup_vm import backup_vm

        spec = spec_from_options(
            specs.BackupVmSpec,
            dict(
                common,
                vm=vms[0],
                pre_freeze=pre_freeze,
                post_thaw=post_thaw,
                post_backup=post_backup,
                guest_password_file=guest_password_file,
            ),
        )
        with byte_progress(f"backing up {vms[0]}", None, not json_out and not orchestrate) as adv:
            summary = run(backup_vm, spec, orchestrate, None if orchestrate else adv)
        _print_vm(summary, json_out)
        return
    from vmkeep.jobs.backup_vms import SomeBackupsFailed, backup_vms

    names = [v for v in vms if not any(c in v for c in "*?[")]
    patterns = [v for v in vms if any(c in v for c in "*?[")]
    many = spec_from_options(
        specs.BackupVmsSpec,
        dict(common, names=names, patterns=patterns, tag=tag, max_parallel=parallel,
             exclude=list(exclude or []), exclude_tag=exclude_tag, stop_after=stop_after,
             guest_scripts={"*": {"pre_freeze": pre_freeze, "post_thaw": post_thaw,
                                  "post_backup": post_backup}}
             if pre_freeze or post_thaw or post_backup else {},
             guest_password_file=guest_password_file),
    )
    try:
        result = run(backup_vms, many, orchestrate)
    except SomeBackupsFailed as exc:
        _print_many(exc.summary, json_out)
        raise
    _print_many(result, json_out)


def _print_vm(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(summary)
        return
    for d in summary["disks"]:
        console_err.print(
            f"  disk {d['key']} {d['label']}: {d['mode']} ({d['reason']}), read "
            f"{human_bytes(d['bytes_read'])}, new {human_bytes(d['bytes_new'])}"
        )
    audit = summary.get("cbt_audit") or {}
    if audit.get("status") in ("ok", "mismatch"):
        console_err.print(
            f"  CBT audit: {audit['status']}, {audit['chunks_sampled']} chunks, "
            f"{human_bytes(audit['bytes_audited'])} "
            f"({100 * audit['share_of_full_read']:.2f}% of a full read)"
        )
    for warning in summary["warnings"]:
        console_err.print(f"  warning: {warning}", style="yellow")
    if summary["consistency"] is None:  # a template: its disks read as they are
        how, snapshot = "template, read without a snapshot", ""
    else:
        how = f"{summary['consistency']}-consistent"
        snapshot = "; snapshot " + (
            "released" if summary["snapshot_removed"] else "NOT released (the sweep will)")
    console_err.print(
        f"{summary['vm']}: restore point {summary['short_id']} ({how}) in "
        f"{summary['duration_s']:.1f} s"
        f"{'' if summary.get('attempts', 1) == 1 else ', attempt ' + str(summary['attempts'])}"
        f"{snapshot}"
    )


def _print_many(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result["vms"])
        return
    if result.get("excluded"):
        console_err.print(f"excluded: {', '.join(visible(n) for n in result['excluded'])}")
    for summary in result["vms"]:
        tries = summary.get("attempts") or 1
        after = f" (after {tries} attempts)" if tries > 1 else ""
        if "error" in summary:
            console_err.print(f"{visible(summary['vm'])}: failed{after}: {summary['error']}",
                              style="red")
        else:
            _print_vm(summary, False)
