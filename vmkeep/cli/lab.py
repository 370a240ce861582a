"""``vmkeep lab``: the ESX lab, a vSphere simulator for development and tests.

* ``up [--vms N] [--port P] [--json]`` — build (cached) and start the lab, or reuse the running one;
* ``status [--json | --env]``, ``down`` (``--env``: shell ``export`` lines naming the lab as
  vCenter — URL, user, CA file and a password file — for trying vmkeep's commands by hand);
* ``write VM [--disk N] --percent P [--seed S] [--trim]`` — random guest writes (or trims);
* ``export-disk VM [--disk N] [--snapshot NAME] --to FILE`` — the lab's own view of a disk;
* ``put-file VM GUEST_PATH LOCAL_FILE`` / ``get-file VM GUEST_PATH LOCAL_FILE``;
* ``fault add KIND [--target T] [--count N] [--delay S] [--bytes B] [--exit-code C]``,
  ``fault list``, ``fault clear [--kind K]``.

``--json`` prints one object: ``url``, ``user``, ``password``, ``thumbprint``, ``cafile`` and
``vms`` (each ``name``, ``guest``, ``host``, ``disks`` with ``key``, ``capacity``,
``datastore_path``, ``local_path``), plus ``hosts``, ``datastores``, ``pid``, ``state_dir``,
``users`` (the restricted account: ``name``, ``password``, ``lacks``) and ``light_vms``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vmkeep.cli.common import JsonOpt, console_err, emit_json, given_path
from vmkeep.lab.errors import LabError, LabNotRunning
from vmkeep.lab.faults import FAULT_KINDS

if TYPE_CHECKING:
    from types import ModuleType

    from vmkeep.lab import runner


def _runner() -> ModuleType:
    """The lab runner, imported on first use (it pulls in ssl and urllib: ~30 ms for every
    other command otherwise)."""
    from vmkeep.lab import runner

    return runner

lab_app = typer.Typer(
    help="The ESX lab: a vSphere simulator with real disks.", no_args_is_help=True
)


def _print_info(info: runner.LabInfo) -> None:
    console_err.print(f"ESX lab running (pid {info.pid}) at {info.url}", markup=False)
    console_err.print(f"  user {info.user}  password {info.password}", markup=False)
    console_err.print(f"  CA file {info.cafile}  thumbprint {info.thumbprint}", markup=False)
    for u in info.users:
        console_err.print(f"  user {u['name']}  password {u['password']}  lacks "
                          f"{', '.join(u.get('lacks', []))}", markup=False)
    if info.light_vms:
        console_err.print(f"  {info.light_vms} lightweight VMs (no disks) in folder light",
                          markup=False)
    for vm in info.vms:
        disks = ", ".join(f"{d['datastore_path']} ({d['capacity'] >> 20} MiB)" for d in vm["disks"])
        console_err.print(
            f"  {vm['name']:<11} {vm['guest']:<8} {vm['host']:<16} {disks}", markup=False
        )
    if info.tape:
        t = info.tape
        console_err.print(
            f"  tape library {t['url']}: changer LUN {t['changer_lun']}, drives LUN "
            f"{', '.join(map(str, t['drive_luns']))}, {t['slots']} slots "
            f"({', '.join(t['barcodes'])})\n  vmkeep tape library add lab --url {t['url']} "
            f"--changer-lun {t['changer_lun']} "
            + " ".join(f"--drive-lun {n}" for n in t["drive_luns"]),
            markup=False,
        )
    console_err.print('vmkeep commands: eval "$(vmkeep lab status --env)"', markup=False)
    console_err.print(
        f"connect: pyVim.connect.SmartConnect(host='127.0.0.1', port={info.port}, "
        "user=..., pwd=..., "
        f"sslContext=ssl.create_default_context(cafile='{info.cafile}'))",
        markup=False,
    )


def _running() -> runner.LabInfo:
    info = _runner().status()
    if info is None:
        raise LabNotRunning()
    return info


@lab_app.command("up")
def up_cmd(
    json_out: JsonOpt = False,
    vms: Annotated[
        int, typer.Option("--vms", help="Number of small VMs for concurrency tests.")
    ] = 4,
    port: Annotated[
        int, typer.Option("--port", help="TCP port on 127.0.0.1 (0: any free port).")
    ] = 0,
    light_vms: Annotated[
        int,
        typer.Option("--light-vms", help="Add N VMs without disks (inventory-at-scale tests)."),
    ] = 0,
    lenient: Annotated[
        bool,
        typer.Option(
            "--lenient",
            help="Debugging only: the old permissive lab (bare datacenter names, no host "
            "endpoints' locks, tickets or throttling). The default lab is as strict as vCenter.",
        ),
    ] = False,
    host_concurrency: Annotated[
        int,
        typer.Option(
            "--host-concurrency", min=1,
            help="Concurrent datastore reads each ESX host serves before answering 503.",
        ),
    ] = 4,
) -> None:
    """Build and start the lab in the background (a running lab is reused)."""
    info = _runner().up(
        n_small=vms, port=port, light_vms=light_vms, lenient=lenient,
        host_concurrency=host_concurrency,
    )
    if json_out:
        emit_json(info.to_json())
    else:
        _print_info(info)


@lab_app.command("status")
def status_cmd(
    json_out: JsonOpt = False,
    env: Annotated[
        bool,
        typer.Option(
            "--env",
            help="Print shell export lines naming the lab as vCenter (VMKEEP_VCENTER, "
            "VMKEEP_VC_USER, VMKEEP_VC_CAFILE, VMKEEP_VC_PASSWORD_FILE): eval \"$(vmkeep lab "
            "status --env)\".",
        ),
    ] = False,
) -> None:
    """Show the running lab (exit 1 when none runs)."""
    info = _runner().status()
    if json_out:
        emit_json({"running": info is not None, **(info.to_json() if info else {})})
    elif env and info is not None:
        typer.echo(_runner().shell_env(info), nl=False)
    elif info is None:
        console_err.print("ESX lab is not running")
    else:
        _print_info(info)
    if info is None:
        raise typer.Exit(1)


@lab_app.command("down")
def down_cmd() -> None:
    """Stop the lab."""
    console_err.print("ESX lab stopped" if _runner().down() else "ESX lab was not running")


@lab_app.command("write")
def write_cmd(
    vm: str,
    percent: Annotated[
        float, typer.Option("--percent", help="Share of the disk to overwrite (or trim).")
    ] = 0,
    disk: Annotated[int, typer.Option("--disk", help="Disk index (0 = first disk).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    offset: Annotated[
        int, typer.Option("--offset", show_default=False,
                          help="With --length: exactly this byte range instead.")
    ] = -1,
    length: Annotated[int, typer.Option("--length", help="Bytes at --offset.")] = 0,
    trim: Annotated[
        bool,
        typer.Option(
            "--trim",
            help="The guest discards (UNMAP) the extents instead: they read zeros; SEsparse "
            "deltas (VMFS6) get unmapped grains.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write random data to about PERCENT % of a guest disk, in scattered extents (or one
    range with --offset/--length; --trim discards instead of writing)."""
    at = (offset, length) if offset >= 0 else None
    if at is None and percent <= 0:
        raise LabError("lab write: give --percent P or --offset O --length N")
    extents = _running().client().write(vm, percent, disk=disk, seed=seed, at=at, trim=trim)
    total = sum(n for _, n in extents)
    if json_out:
        emit_json({"vm": vm, "disk": disk, "extents": extents, "bytes": total, "trim": trim})
    else:
        console_err.print(
            f"{'trimmed' if trim else 'wrote'} {total} bytes in {len(extents)} extents"
        )


@lab_app.command("export-disk")
def export_disk_cmd(
    vm: str,
    to: Annotated[
        Path, typer.Option("--to", parser=given_path, help="Raw image file to write (sparse).")
    ],
    disk: Annotated[int, typer.Option("--disk", help="Disk index (0 = first disk).")] = 0,
    snapshot: Annotated[
        str, typer.Option("--snapshot", help="As of this snapshot (name or moref), not now.")
    ] = "",
    json_out: JsonOpt = False,
) -> None:
    """Write the lab's own view of a guest disk (flat base + snapshot deltas) to a raw file:
    the reference to compare backups and restores against."""
    size = _running().client().export_disk(vm, disk, to, snapshot or None)
    if json_out:
        emit_json(
            {"vm": vm, "disk": disk, "snapshot": snapshot or None, "to": str(to), "bytes": size}
        )
    else:
        console_err.print(f"{vm} disk {disk} ({size} bytes) -> {to}", markup=False)


@lab_app.command("put-file")
def put_file_cmd(vm: str, guest_path: str, local_file: Path) -> None:
    """Put LOCAL_FILE at GUEST_PATH inside the guest's file system (ext4, NTFS or FAT)."""
    _running().client().put_file(vm, guest_path, local_file.read_bytes())
    console_err.print(f"{local_file} -> {vm}:{guest_path}", markup=False)


@lab_app.command("get-file")
def get_file_cmd(vm: str, guest_path: str, local_file: Path) -> None:
    """Copy GUEST_PATH out of the guest's file system to LOCAL_FILE."""
    local_file.write_bytes(_running().client().get_file(vm, guest_path))


fault_app = typer.Typer(
    help=f"Switch faults on and off. Kinds: {', '.join(FAULT_KINDS)}.", no_args_is_help=True
)
lab_app.add_typer(fault_app, name="fault")


@fault_app.command("add")
def fault_add(
    kind: str,
    target: Annotated[
        str, typer.Option("--target", help="VM, SOAP method, host, datastore or path.")] = "",
    count: Annotated[int, typer.Option("--count", help="Times it fires (0: until cleared).")] = 1,
    delay: Annotated[
        float,
        typer.Option("--delay", help="Seconds (quiesce_timeout, remove_slow, ds_slow per MiB)."),
    ] = 0,
    nbytes: Annotated[int, typer.Option(
        "--bytes", help="Bytes before ds_short/ds_drop cut; the free space ds_full reports; the "
        "milliseconds ds_latency reports.")] = 0,
    exit_code: Annotated[int, typer.Option("--exit-code", help="guest_program exit code.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Add a fault rule."""
    rule = _running().client().add_fault(kind, target, count, delay, nbytes, exit_code)
    if json_out:
        emit_json(rule)
    else:
        console_err.print(f"fault added: {rule}", markup=False)


@fault_app.command("list")
def fault_list(json_out: JsonOpt = False) -> None:
    """List active fault rules."""
    rules = _running().client().faults()
    if json_out:
        emit_json({"faults": rules})
    else:
        for r in rules:
            console_err.print(str(r), markup=False)


@fault_app.command("clear")
def fault_clear(kind: Annotated[str, typer.Option("--kind", help="Only this kind.")] = "") -> None:
    """Clear fault rules (and reconnect hosts)."""
    _running().client().clear_faults(kind or None)


from vmkeep.cli import main as _main  # noqa: E402

_main.app.add_typer(lab_app, name="lab")
