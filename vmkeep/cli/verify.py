"""``vmkeep export POINT --nbd`` and ``vmkeep verify fs POINT``: restore points proved from outside.

``export`` serves one disk (or one volume) of an image or VM restore point read-only over NBD
until Ctrl-C (:mod:`vmkeep.browse.nbd`); ``verify fs`` runs each volume's own read-only checker
against such an export and records the verdict in the repository
(:mod:`vmkeep.storage.verifications`).  Exit codes: 0 clean; 13 a volume is damaged or could not
be checked; the usual codes for a missing point, repository or password.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    above_zero,
    console_err,
    console_out,
    emit_json,
    given_location,
    open_repository,
    regular_expression,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.errors import InputError, UsageError
from vmkeep.jobs.limits import MAX_TIMEOUT_S

RecordOpt = Annotated[
    bool, typer.Option("--record/--no-record", help="Store the result in the repository.")
]

verify_app = typer.Typer(
    help="Prove restore points: boot them, check their file systems.", no_args_is_help=True
)
app.add_typer(verify_app, name="verify")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise UsageError(f"--listen wants HOST:PORT (a port of 1 to 65535), not {value!r}")
    return host.strip("[]"), int(port)


@app.command("export")
def export_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    nbd: Annotated[bool, typer.Option("--nbd", help="Serve the disk over NBD (nbdkit).")] = False,
    disk: Annotated[int, typer.Option("--disk", min=0, help="Disk number.")] = 0,
    volume: Annotated[
        str | None, typer.Option("--volume", help="Serve one volume (as `vmkeep ls` names it).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT to listen on (e.g. 127.0.0.1:10809).")
    ] = None,
    socket: Annotated[
        str | None,
        typer.Option("--socket", parser=given_location,
                     help="Unix socket to listen on (default: a temp one)."),
    ] = None,
    writable: Annotated[
        bool,
        typer.Option(
            "--writable",
            help="Accept writes into a temporary overlay (never into the repository).",
        ),
    ] = False,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Serve a restore point's disk read-only over NBD until Ctrl-C."""
    from vmkeep.browse.nbd import ExportStopped, NbdExport

    setup_logging(verbose)
    if not nbd:
        raise UsageError("choose what to export: --nbd")
    if listen and socket:
        raise UsageError("--listen and --socket exclude each other")
    url = require_repo(repo)
    repository = open_repository(url)
    from vmkeep.browse.point import PointImage

    # the point, its kind and the disk are checked here, before nbdkit starts: a wrong one is
    # one line and exit 14, not "the export could not be started"
    with PointImage.open(repository, point) as img:
        point_id = img.point.id
        if volume is not None:
            info = img.volume(volume)
            disk, volume = info.disk, info.name
        elif disk not in img.disk_numbers:
            raise InputError(f"restore point {img.point.short_id} has no disk {disk} (disks: "
                             f"{', '.join(map(str, img.disk_numbers)) or 'none'})")
    export = NbdExport(
        url,
        point_id,
        disk,
        volume=volume,
        socket_path=socket,
        listen=_listen(listen) if listen else None,
        writable=writable,
    ).start()
    summary = {
        "point": point_id,
        "disk": disk,
        "volume": volume,
        "uri": export.uri,
        "writable": writable,
    }
    if json_out:
        emit_json(summary)
    else:
        what = f"volume {volume}" if volume else f"disk {disk}"
        console_err.print(
            f"serving {what} of {point_id[:8]} at {export.uri}"
            f"{' (writes go to a temporary overlay)' if writable else ' (read-only)'}; "
            "Ctrl-C to stop",
            markup=False,
        )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        status = export.wait()
    except KeyboardInterrupt:
        status = 0
        export.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        export.stop()
    if status != 0:  # nbdkit ended by itself: killed, or failed while serving
        raise ExportStopped(export.failure())
    if not json_out:
        console_err.print("export stopped", markup=False)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the export like Ctrl-C: raised here, handled outside any blocking wait."""
    raise KeyboardInterrupt


def _verify_point(orchestrate: bool | None, **params: Any) -> dict[str, Any]:
    """Run the ``verify-point`` job (in-process, or its flow under Prefect): open the
    repository, resolve the point, check, record.  A failed check raises
    :class:`~vmkeep.jobs.verify.VerificationFailed` carrying the check's JSON."""
    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.maintenance_specs import VerifyPointSpec
    from vmkeep.jobs.verify import verify_point

    result: dict[str, Any] = run_job(verify_point, VerifyPointSpec, orchestrate, **params)
    return result


def _shown(
    orchestrate: bool | None, show: Callable[[dict[str, Any]], None], **params: Any
) -> None:
    """Run the check, then ``show`` its result — also a failed one, before exiting 13."""
    from vmkeep.jobs.verify import VerificationFailed

    try:
        result = _verify_point(orchestrate, **params)
    except VerificationFailed as exc:
        if exc.result is not None:
            show(exc.result)
        raise
    show(result)


def _check(
    repo: str, orchestrate: bool | None, json_out: bool, announce: str,
    show: Callable[[dict[str, Any]], None], **params: Any,
) -> None:
    """A ``verify`` verb's common part: the repository, a line saying what starts (not with
    ``--json``), the check, its result printed by ``show`` (or as JSON)."""
    url = require_repo(repo)
    if not json_out:
        console_err.print(announce, markup=False)
    _shown(orchestrate, emit_json if json_out else show, repo=url, **params)


@verify_app.command("fs")
def verify_fs_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    volume: Annotated[
        list[str] | None, typer.Option("--volume", help="Check only this volume (repeatable).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", callback=above_zero(MAX_TIMEOUT_S),
                            help="Seconds per checker.")
    ] = 3600.0,
    record: RecordOpt = True,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run each volume's own read-only checker (e2fsck -n, xfs_repair -n, …) on a restore point."""
    setup_logging(verbose)
    _check(repo, orchestrate, json_out, f"checking the volumes of {point} …", _print_table,
           point=point, check="fs", volumes=list(volume or []), timeout=timeout, record=record)


@verify_app.command("boot")
def verify_boot_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    timeout: Annotated[
        float, typer.Option("--timeout", callback=above_zero(MAX_TIMEOUT_S),
                              help="Seconds to wait for the sign of life.")
    ] = 120.0,
    expect: Annotated[
        str,
        typer.Option("--expect", parser=regular_expression,
                     help="Regular expression on the serial console (a login prompt)."),
    ] = r"login:\s*$",
    accel: Annotated[
        str, typer.Option("--accel", help="auto (KVM when usable, else TCG), kvm or tcg.")
    ] = "auto",
    firmware: Annotated[
        str, typer.Option("--firmware", help="auto (from the saved VM configuration), bios, efi.")
    ] = "auto",
    screenshot: Annotated[
        str | None,
        typer.Option("--screenshot", parser=given_location,
                     help="Also write the screen as a PNG here."),
    ] = None,
    record: RecordOpt = True,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Boot a restore point in QEMU from the repository (no network) and wait for a login prompt."""
    setup_logging(verbose)
    if accel not in ("auto", "kvm", "tcg") or firmware not in ("auto", "bios", "efi"):
        raise UsageError("--accel is auto, kvm or tcg; --firmware is auto, bios or efi")
    _check(repo, orchestrate, json_out, f"booting {point} (up to {timeout:.0f} s) …", _print_boot,
           point=point, check="boot", timeout=timeout, expect=expect,
           accelerator=None if accel == "auto" else accel,
           firmware=None if firmware == "auto" else firmware,
           screenshot_path=screenshot, record=record)


@verify_app.command("yara")
def verify_yara_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    rules: Annotated[
        list[str],
        typer.Option("--rules", parser=given_location,
                     help="YARA rule file, or folder of *.yar / *.yara (repeatable)."),
    ],
    volume: Annotated[
        list[str] | None, typer.Option("--volume", help="Scan only this volume (repeatable).")
    ] = None,
    max_file_size: Annotated[
        int, typer.Option("--max-file-size", help="Skip files larger than this many MiB.")
    ] = 256,
    find_clean: Annotated[
        bool,
        typer.Option(
            "--find-clean",
            help="Scan the point, then the older points of its name, newest first, until one "
            "is clean: the point to restore after an infection.",
        ),
    ] = False,
    record: RecordOpt = True,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Scan every guest file of a restore point with YARA rules (malware before a restore)."""
    setup_logging(verbose)
    if max_file_size <= 0:
        raise UsageError("--max-file-size is a number of MiB above 0")
    _check(repo, orchestrate, json_out, f"scanning the files of {point} …",
           _print_clean if find_clean else _print_scan,
           point=point, check="yara", rules=[os.path.abspath(r) for r in rules],
           volumes=list(volume or []), max_file_bytes=max_file_size << 20, record=record,
           find_clean=find_clean)


def _print_clean(result: dict[str, Any]) -> None:
    for r in result["points"]:
        verdict = "clean" if r["ok"] else f"{len(r['matches'])} file(s) matched"
        console_out.print(f"{r['point'][:8]}  {r['time']}  {verdict}", markup=False)
    if result["clean"]:
        console_err.print(f"newest clean point of {result['name']}: {result['clean'][:8]}",
                          markup=False)
    else:
        console_err.print(f"no clean point of {result['name']} among those scanned",
                          markup=False)


def _print_scan(result: dict[str, Any]) -> None:
    for m in result["matches"]:
        console_out.print(f"MATCH {m['volume']}:{m['path']}  {', '.join(m['rules'])}",
                          markup=False)
    verdict = "nothing matched" if result["ok"] else f"{len(result['matches'])} file(s) matched"
    console_err.print(
        f"{verdict}: {result['files_scanned']} files, {result['bytes_scanned'] / 1e6:.1f} MB in "
        f"{len(result['volumes'])} volume(s) scanned with {result['rules']} rule(s) in "
        f"{result['duration_s']:.1f} s; {result['skipped_large']} larger than the limit skipped",
        markup=False,
    )
    for problem in result["errors"] + result.get("warnings", []):
        console_err.print(f"warning: {problem}", markup=False)


def _print_boot(result: dict[str, Any]) -> None:
    verdict = "passed" if result["ok"] else "FAILED"
    console_out.print(
        f"boot {verdict} in {result['seconds']:.1f} s ({result['accelerator']}, "
        f"{result['firmware']}); {result['bytes_fetched'] / 1e6:.1f} MB of "
        f"{result['disk_bytes'] / 1e6:.1f} MB fetched",
        markup=False,
    )


def _print_table(obj: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("Volume", "FS", "Result", "Checker", "Seconds", "Reason")
    for vol in obj["volumes"]:
        table.add_row(
            Text(vol["volume"]),
            Text(vol["fs"] or "-"),
            Text(vol["result"]),
            Text(vol["checker"]),
            f"{vol['seconds']:.1f}",
            Text(vol["reason"]),
        )
    console_out.print(table)
    for warning in obj["warnings"]:
        console_err.print(f"warning: {warning}", markup=False)
