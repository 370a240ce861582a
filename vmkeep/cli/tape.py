"""``vmkeep tape …``: libraries, cartridges, pools, and copying restore points to and from tape."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    console_out,
    emit_json,
    human_bytes,
    open_repository,
    setup_logging,
)
from vmkeep.cli.main import app

tape_app = typer.Typer(help="Tape drives, libraries and pools.", no_args_is_help=True)
app.add_typer(tape_app, name="tape")
library_app = typer.Typer(help="Configure named tape libraries.", no_args_is_help=True)
tape_app.add_typer(library_app, name="library")
pool_app = typer.Typer(help="Media pools (retention, append).", no_args_is_help=True)
tape_app.add_typer(pool_app, name="pool")

LibOpt = Annotated[
    str, typer.Option("--library", "-l", envvar="VMKEEP_TAPE_LIBRARY", help="Library name.")
]
DriveOpt = Annotated[int | None, typer.Option("--drive", min=0,
                                                help="Drive index (default: a free one).")]
CatalogRepoOpt = Annotated[
    str | None,
    typer.Option(
        "--repo", "-r", envvar="VMKEEP_REPO", help="Repository holding the tape catalog."
    ),
]


@library_app.command("add")
def library_add(
    name: str,
    url: Annotated[str | None, typer.Option(help="iscsi://host:port/iqn (with --*-lun).")] = None,
    changer_lun: Annotated[int | None, typer.Option("--changer-lun")] = None,
    drive_lun: Annotated[list[int] | None, typer.Option("--drive-lun")] = None,
    changer: Annotated[str | None, typer.Option(help="Changer device URL (sg:///dev/sgN).")] = None,
    drive: Annotated[list[str] | None, typer.Option(help="Drive device URL, in order.")] = None,
) -> None:
    """Configure a library once: its changer and drives."""
    from vmkeep.errors import UsageError
    from vmkeep.tape.library import LibraryConfig

    if url:
        if changer_lun is None or not drive_lun:
            raise UsageError("--url needs --changer-lun and at least one --drive-lun")
        base = url.rstrip("/")
        cfg = LibraryConfig(name, f"{base}/{changer_lun}", [f"{base}/{n}" for n in drive_lun])
    elif changer and drive:
        cfg = LibraryConfig(name, changer, list(drive))
    else:
        raise UsageError("give --url with LUNs, or --changer and --drive device URLs")
    from vmkeep.scsi.transport import check_device_url

    for device in (cfg.changer, *cfg.drives):  # refused now, not at the first inventory
        check_device_url(device)
    cfg.save()
    console_err.print(f"library {name}: changer {cfg.changer}, {len(cfg.drives)} drive(s)")


@pool_app.command("add")
def pool_add(
    name: str,
    retention_days: Annotated[int, typer.Option("--retention-days")] = 7,
    append: Annotated[bool, typer.Option("--append/--no-append")] = True,
) -> None:
    """Define a media pool (e.g. daily 7 days, weekly 35, monthly 400)."""
    from vmkeep.tape.library import Pool, save_pool

    save_pool(Pool(name, retention_days, append))
    console_err.print(f"pool {name}: retention {retention_days} days, append {append}")


def _lib(name: str) -> Any:
    from vmkeep.tape.library import Library

    return Library.open(name)


@tape_app.command("inventory")
def inventory(library: LibOpt, json_out: JsonOpt = False) -> None:
    """Slots, drives and mail slots with barcodes and pool state."""
    with _lib(library) as lib:
        inv = lib.inventory()
    if json_out:
        emit_json(inv)
        return
    for e in inv["elements"]:  # a listing: stdout, as `list` and `ls`
        media = e.get("media") or {}
        console_out.print(
            f"{e['kind']:5} {e['address']:5}  {e['barcode'] or '-':10} "
            f"{media.get('pool') or ''} {('files ' + str(media['files'])) if media else ''}"
        )


@tape_app.command("label")
def label(
    library: LibOpt,
    barcode: Annotated[list[str], typer.Argument(help="Cartridges to label.")],
    pool: Annotated[str, typer.Option("--pool")] = "scratch",
    force: Annotated[bool, typer.Option("--force", help="Relabel cartridges with data.")] = False,
    drive: DriveOpt = None,
) -> None:
    """Write a vmkeep label (everything on the cartridge becomes unreadable)."""
    from vmkeep import clock
    from vmkeep.errors import UsageError
    from vmkeep.tape.label import Label, write_label
    from vmkeep.tape.library import check_name

    check_name("pool", pool)
    with _lib(library) as lib:
        media = lib.media()
        for code in barcode:
            m = media.get(code)
            if m and m.files and not force and not m.expired():
                raise UsageError(f"{code} holds {m.files} unexpired file(s); use --force")
        with lib.drive_lock(drive) as di:
            d = lib.open_drive(di)
            try:
                for code in barcode:
                    with lib.cartridge_lock(code):
                        lib.load(code, di)
                        d.wait_ready()
                        d.set_variable_blocks()
                        bs = d.read_block_limits().choose()
                        now = clock.now().isoformat()
                        seq = lib.next_sequence(pool)
                        write_label(d, Label(code, pool, now, bs, None, seq))
                        lib.update_media(code, pool=pool, sequence=seq, files=0, full=False,
                                         repository_id=None, labelled_at=now, expires=None)
                        lib.unload(di)
                        console_err.print(f"labelled {code} for pool {pool}")
            finally:
                d.close()


@tape_app.command("load")
def load(
    library: LibOpt, barcode: str, drive: Annotated[int, typer.Option("--drive", min=0)] = 0
) -> None:
    """Move a cartridge into a drive."""
    with _lib(library) as lib:
        lib.load(barcode, drive)
    console_err.print(f"loaded {barcode} into drive {drive}")


@tape_app.command("unload")
def unload(library: LibOpt, drive: Annotated[int, typer.Option("--drive", min=0)] = 0) -> None:
    """Unload a drive and return its cartridge to its slot."""
    with _lib(library) as lib:
        code = lib.unload(drive)
    console_err.print(f"unloaded {code}" if code else "drive was empty")


@tape_app.command("import")
def import_(library: LibOpt) -> None:
    """Take the cartridge in the mail slot into a free storage slot."""
    with _lib(library) as lib:
        console_err.print(f"imported {lib.import_cartridge()}")


@tape_app.command("export")
def export(library: LibOpt, barcode: str) -> None:
    """Move a cartridge to the mail slot (to take it offline)."""
    with _lib(library) as lib:
        console_err.print(f"{barcode} is in mail slot {lib.export_cartridge(barcode)}")


@tape_app.command("copy")
def copy(
    library: LibOpt,
    points: Annotated[
        list[str] | None, typer.Argument(help="Restore points (ids or prefixes).")
    ] = None,
    repo: RepoOpt = "",
    pool: Annotated[str, typer.Option("--pool")] = "daily",
    all_new: Annotated[
        bool, typer.Option("--all-new", help="Every point not yet on a cartridge of the pool.")
    ] = False,
    latest: Annotated[
        bool, typer.Option("--latest", help="The newest point of each backup name (VM, "
                           "image, file source), unless already in the pool: GFS pools.")
    ] = False,
    drive: DriveOpt = None,
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Copy restore points from the disk repository onto cartridges of a pool."""
    setup_logging(verbose)
    from vmkeep.cli.common import require_repo
    from vmkeep.errors import UsageError

    if sum([bool(points), all_new, latest]) != 1:
        raise UsageError("name restore points, or use one of --all-new and --latest")
    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.maintenance_specs import TapeCopySpec
    from vmkeep.jobs.tape_copy import tape_copy

    report = run_job(tape_copy, TapeCopySpec, orchestrate, None if json_out else "copying to tape",
                     repo=require_repo(repo), library=library, pool=pool,
                     points=list(points or []), all_new=all_new, latest=latest, drive=drive)
    if json_out:
        emit_json(report)
        return
    console_err.print(
        f"{len(report['points'])} point(s) → {', '.join(report['cartridges']) or 'nothing'}: "
        f"{human_bytes(report['bytes'])} in {len(report['files'])} file(s), "
        f"{report.get('mb_per_s', 0)} MB/s"
    )


@tape_app.command("restore")
def restore(
    library: LibOpt,
    point: str,
    to_repo: Annotated[str, typer.Option("--to-repo", help="Repository to restore into.")],
    repo: CatalogRepoOpt = None,
    drive: DriveOpt = None,
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Bring a restore point back from tape into a disk repository."""
    setup_logging(verbose)
    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.maintenance_specs import TapeRestoreSpec
    from vmkeep.jobs.tape_restore import tape_restore

    report = run_job(tape_restore, TapeRestoreSpec, orchestrate, point=point, to_repo=to_repo,
                     library=library, catalog_repo=repo or None, drive=drive)
    if json_out:
        emit_json(report)
        return
    console_err.print(f"restored {point} into {to_repo}: {report['objects']} object(s), "
                      f"{human_bytes(report['bytes'])} from {', '.join(report['cartridges'])}")


def restore_image_from_library(
    library: str, point: str, to: str, repo: str | None, disk: int = 0,
    image_format: str = "raw", json_out: bool = False, drive: int | None = None,
    overwrite: bool = False,
) -> None:
    """``restore image --from-tape LIBRARY`` and ``tape restore-image``: stream one disk."""
    from vmkeep.cli.common import repository_password
    from vmkeep.errors import UsageError
    from vmkeep.tape import catalog
    from vmkeep.tape.image import restore_image_from_tape

    if image_format != "raw":
        raise UsageError("from tape, images are restored raw (--format raw)")
    from vmkeep.storage.errors import RepositoryNotFound
    from vmkeep.tape.errors import NoCatalogRepository

    try:
        records = catalog.records(open_repository(repo))
    except RepositoryNotFound:
        raise NoCatalogRepository(repo) from None
    with _lib(library) as lib:
        result = restore_image_from_tape(lib, records, point, to, disk=disk, drive_index=drive,
                                         password=repository_password(), overwrite=overwrite)
    if json_out:
        emit_json(result)
        return
    console_err.print(f"restored disk {disk} of {result['point'][:12]} from "
                      f"{', '.join(result['cartridges'])} to {to} "
                      f"({human_bytes(result['bytes_restored'])})")


@tape_app.command("restore-image")
def restore_image(
    library: LibOpt,
    point: str,
    to: Annotated[str, typer.Option("--to", help="Target file (raw image).")],
    repo: CatalogRepoOpt = None,
    disk: Annotated[int, typer.Option("--disk", min=0)] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing regular file.")] = False,
    drive: DriveOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stream a disk image from tape into a file, without a disk repository."""
    restore_image_from_library(library, point, to, repo, disk, "raw", json_out, drive, overwrite)


@tape_app.command("scan")
def scan_cmd(
    library: LibOpt,
    to_repo: Annotated[
        str, typer.Option("--to-repo", help="Repository to rebuild the catalog in.")
    ],
    barcode: Annotated[list[str] | None, typer.Option("--barcode")] = None,
    drive: DriveOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read cartridges and rebuild the tape catalog (after the disk repository was lost)."""
    from vmkeep.tape.restore import scan

    with _lib(library) as lib:
        result = scan(lib, to_repo, barcodes=barcode or None, drive_index=drive)
    if json_out:
        emit_json(result)
        return
    for line in scan_summary(result, to_repo):
        console_err.print(line)


def scan_summary(result: dict[str, Any], to_repo: str) -> list[str]:
    """The human lines of ``tape scan``: what ``--json`` says, counters and warnings included."""
    lines = [f"{result['files']} tape file(s), {len(result['points'])} restore point(s)"
             f" catalogued in {to_repo}",
             f"{result.get('from_catalog_files', 0)} data file(s) catalogued from their catalog "
             f"file, {result.get('read_in_full', 0)} read in full; "
             f"{human_bytes(result.get('bytes_read', 0))} read from tape"]
    if result.get("skipped"):
        lines.append("skipped (no vmkeep label, or another repository): "
                     + ", ".join(result["skipped"]))
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return lines


@tape_app.command("catalog")
def catalog_cmd(repo: RepoOpt = "", json_out: JsonOpt = False) -> None:
    """Which restore points are on which tape files."""
    from vmkeep.tape import catalog

    recs = catalog.records(open_repository(repo))
    if json_out:
        emit_json({"files": [{k: v for k, v in r.to_json().items() if k != "objects"}
                             for r in recs]})
        return
    for r in recs:  # a listing: stdout
        console_out.print(f"{r.tape_id} file {r.file}: {len(r.points)} point(s), "
                          f"{human_bytes(r.bytes)}{'' if r.complete else ' (cut)'}")
