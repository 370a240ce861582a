"""``vmkeep export POINT --nbd`` and ``vmkeep verify fs POINT``: restore points proved from outside.

``export`` serves one disk (or one volume) of an image or VM restore point read-only over NBD
until Ctrl-C (:mod:`vmkeep.browse.nbd`); ``verify fs`` runs each volume's own read-only checker
against such an export and records the verdict in the repository
(:mod:`vmkeep.storage.verifications`).  Exit codes: 0 clean; 13 a volume is damaged or could not
be checked; the usual codes for a missing point, repository or password.
"""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    emit_json,
    open_repository,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.errors import UsageError, VmkeepError

verify_app = typer.Typer(help="Prove restore points: file-system checks.", no_args_is_help=True)
app.add_typer(verify_app, name="verify")


class VerificationFailed(VmkeepError):
    """Verification failed: {}"""

    exit_code = 13


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen wants HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


@app.command("export")
def export_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    nbd: Annotated[bool, typer.Option("--nbd", help="Serve the disk over NBD (nbdkit).")] = False,
    disk: Annotated[int, typer.Option("--disk", help="Disk number.")] = 0,
    volume: Annotated[
        str | None, typer.Option("--volume", help="Serve one volume (as `vmkeep ls` names it).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT to listen on (e.g. 127.0.0.1:10809).")
    ] = None,
    socket: Annotated[
        str | None, typer.Option("--socket", help="Unix socket to listen on (default: a temp one).")
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
    from vmkeep.browse.nbd import NbdExport

    setup_logging(verbose)
    if not nbd:
        raise UsageError("choose what to export: --nbd")
    if listen and socket:
        raise UsageError("--listen and --socket exclude each other")
    url = require_repo(repo)
    repository = open_repository(url)
    point_id = repository.resolve(point)
    if volume is not None:
        from vmkeep.browse.point import PointImage

        with PointImage.open(repository, point_id) as img:
            info = img.volume(volume)
            disk, volume = info.disk, info.name
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
        export.wait()
    except KeyboardInterrupt:
        export.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        export.stop()
    if not json_out:
        console_err.print("export stopped", markup=False)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the export like Ctrl-C: raised here, handled outside any blocking wait."""
    raise KeyboardInterrupt


@verify_app.command("fs")
def verify_fs_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    volume: Annotated[
        list[str] | None, typer.Option("--volume", help="Check only this volume (repeatable).")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per checker.")] = 3600.0,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Store the result in the repository.")
    ] = True,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run each volume's own read-only checker (e2fsck -n, xfs_repair -n, …) on a restore point."""
    from vmkeep.browse.fsverify import verify_filesystems
    from vmkeep.storage import verifications

    setup_logging(verbose)
    url = require_repo(repo)
    repository = open_repository(url)
    point_id = repository.resolve(point)

    def progress(name: str) -> None:
        if not json_out:
            console_err.print(f"checking {name} …", markup=False)

    result = verify_filesystems(
        repository, url, point_id, volumes=volume or None, timeout=timeout, progress=progress
    )
    if record:
        verifications.record(repository, point_id, "fs", result.ok, result.to_json())
    if json_out:
        emit_json(result.to_json())
    else:
        _print_table(result.to_json())
    if not result.checks:
        raise VerificationFailed(f"{point_id[:8]} has no volume to check")
    if not result.ok:
        bad = [c.volume for c in result.checks if c.result not in ("clean", "skipped")]
        raise VerificationFailed(f"{', '.join(bad)} of {point_id[:8]} did not check clean")


def _print_table(obj: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from vmkeep.cli.common import console_out

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
