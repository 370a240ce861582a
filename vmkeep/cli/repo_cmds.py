"""``vmkeep init``, ``vmkeep list`` and ``vmkeep check``: repository-level verbs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    byte_progress,
    console_err,
    console_out,
    emit_json,
    human_bytes,
    open_repository,
    repository_password,
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import app


@app.command("init")
def init_cmd(
    repo: RepoOpt = "",
    chunk_size: Annotated[
        int, typer.Option(help="Fixed chunk size for disk images, in KiB.")
    ] = 1024,
    pack_size: Annotated[
        int, typer.Option(min=1, max=512, help="Target pack size, in MiB (packs are built in "
                          "memory).")
    ] = 32,
    image_cdc: Annotated[
        int,
        typer.Option(
            "--image-cdc",
            help="Average size in KiB of the content-defined pieces image chunks are cut into "
            "(finds the same data at other offsets; docs/format.md); 0: store chunks whole "
            "(a version-1 repository).  Default: 1/16 of the chunk size.",
            show_default=False,
        ),
    ] = -1,
    compression_level: Annotated[
        int,
        typer.Option(
            "--compression-level",
            help="zstd level (1-19) of new data (image backups use at least 3 while they wait "
            "for their source); 3 stores the benchmark image 2 % smaller than 1 for ~40 % "
            "more compression CPU (docs/performance.md).",
        ),
    ] = 1,
    encrypt: Annotated[
        bool,
        typer.Option(
            "--encrypt", help="Encrypt with a passphrase from VMKEEP_PASSWORD(_FILE|_COMMAND) "
            "(without it the repository is not encrypted, even with a password set)."
        ),
    ] = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Create a new repository."""
    from vmkeep.storage.repository import Repository

    setup_logging(verbose)
    password = None
    if encrypt:
        password = repository_password()
        if not password:
            from vmkeep.errors import UsageError

            raise UsageError("--encrypt needs VMKEEP_PASSWORD, _FILE or _COMMAND")
    from vmkeep.storage.config import DEFAULT_IMAGE_CDC

    cdc: dict[str, int] | None = DEFAULT_IMAGE_CDC
    if image_cdc == 0:
        cdc = None
    elif image_cdc > chunk_size:
        from vmkeep.errors import UsageError

        raise UsageError(f"init: --image-cdc {image_cdc} is larger than a chunk ({chunk_size} "
                         "KiB): the pieces are cut out of chunks")
    elif image_cdc > 0:
        avg = image_cdc * 1024
        cdc = {"min": avg // 4, "avg": avg, "max": min(avg * 4, chunk_size * 1024)}
    elif image_cdc != -1:
        from vmkeep.errors import UsageError

        raise UsageError(f"init: --image-cdc must be 0 (chunks whole) or a size in KiB, "
                         f"not {image_cdc}")
    try:
        repository = Repository.init(
            require_repo(repo),
            image_chunk_size=chunk_size * 1024,
            compression_level=compression_level,
            pack_size=pack_size << 20,
            password=password,
            image_cdc=cdc,
        )
    except ValueError as exc:
        from vmkeep.errors import UsageError

        raise UsageError(f"init: {exc}") from None
    encrypted = repository.config.encrypted
    if json_out:
        emit_json({"id": repository.config.id, "location": repository.backend.location,
                   "compression_level": repository.config.compression_level,
                   "encrypted": encrypted})
    else:
        console_err.print(
            f"created repository {repository.config.id[:8]} at {repository.backend.location} "
            f"({'encrypted' if encrypted else 'not encrypted'})", markup=False,
        )
    if not encrypted and (given := _password_given()):  # restic's users take it to encrypt
        console_err.print(
            f"note: {given} is set, but only `init --encrypt` encrypts: this repository's data "
            "is readable by anyone who can read the target", markup=False,
        )


def _password_given() -> str | None:
    """The variable that sets a repository password, if any (a command is not run)."""
    from vmkeep.settings import settings

    env = settings()
    for variable, value in (("VMKEEP_PASSWORD", env.password),
                            ("VMKEEP_PASSWORD_FILE", env.password_file),
                            ("VMKEEP_PASSWORD_COMMAND", env.password_command)):
        if value:
            return variable
    return None


@app.command("list")
def list_cmd(
    repo: RepoOpt = "",
    name: Annotated[str | None, typer.Option("--name", help="Only this VM / source.")] = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """List restore points, oldest first.  A point whose manifest is damaged, forged or from
    another repository is listed as damaged, with the reason, and the rest still listed."""
    from vmkeep.storage.change_rate import is_change_warning
    from vmkeep.storage.protection import protections
    from vmkeep.storage.repository import DamagedPoint

    setup_logging(verbose)
    damaged: list[DamagedPoint] = []
    repository = open_repository(repo)
    points = repository.list_points(name, damaged=damaged)
    held = protections(repository.backend) if points else {}
    if json_out:
        emit_json({
            "points": [
                {**p.to_json(), "warnings": list(p.meta.get("warnings") or []),
                 "protected": held[p.id].to_json() if p.id in held else None}
                for p in points
            ],
            "damaged": [d.to_json() for d in damaged],
        })
        return
    rows: list[tuple[str, ...]] = []
    shared = _names_of_several_vms(points)
    for p in points:
        # an image's disk sizes; a file backup's bytes of file data (it has no disks)
        size = sum(int(d.get("size", 0)) for d in p.disks) or int(
            (p.meta.get("stats") or {}).get("bytes", 0))
        modes = ",".join(sorted({visible(d.get("mode", "")) for d in p.disks}))
        rows.append(
            (
                p.id[:8],
                p.time.strftime("%Y-%m-%d %H:%M:%S"),
                visible(p.name) + (f" ({visible(_vm_folder(p))})" if p.name in shared else ""),
                visible(p.kind),
                f"{len(p.disks)} ({modes})" if p.disks else "-",
                human_bytes(size),
                str(p.meta.get("consistency") or "-")
                + (" cbt-suspect" if any(d.get("cbt_suspect") for d in p.disks) else "")
                + (" unusual-change" if any(
                    is_change_warning(str(w)) for w in p.meta.get("warnings") or []) else ""),
            )
            + ((_protected_cell(held[p.id]) if p.id in held else "",) if held else ())
        )
    for d in damaged:
        rows.append((d.id[:8], "-", visible(d.reason, backslash=False), "DAMAGED", "-", "-", "")
                    + (("",) if held else ()))
    header = ("ID", "Time", "Name", "Kind", "Disks", "Size", "Consistency") + (
        ("Protected",) if held else ())
    console_out.print(_columns(header, rows), soft_wrap=True)
    console_err.print(f"{len(points)} restore point(s)")
    if damaged:
        console_err.print(
            f"{len(damaged)} damaged restore point(s) skipped; `vmkeep check` for details",
            style="red",
        )


@app.command("check")
def check_cmd(
    repo: RepoOpt = "",
    read_data: Annotated[
        bool, typer.Option("--read-data", help="Read and authenticate every stored chunk.")
    ] = False,
    subset: Annotated[
        str | None,
        typer.Option(
            "--read-data-subset", "--subset",
            help="Read and authenticate only share N/M of the packs, e.g. 1/10 (implies "
            "--read-data; run 1/10 … 10/10 on ten days to read everything), or P% of them "
            "drawn at random, e.g. 5%.",
        ),
    ] = None,
    accept_rollback: Annotated[
        bool,
        typer.Option(
            "--accept-rollback",
            help="Accept the repository as it is now (an older copy restored on purpose): "
            "forget this client's record of points and config seen before.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Verify the repository; exit code 13 names damage with every affected restore point."""
    from vmkeep.errors import UsageError
    from vmkeep.storage.checker import check_repository, parse_subset
    from vmkeep.storage.errors import RepositoryDamaged

    setup_logging(verbose)
    share = None
    if subset:
        try:
            share = parse_subset(subset)
        except ValueError as exc:
            raise UsageError(f"--read-data-subset: {exc}") from None
        read_data = True  # as restic's --read-data-subset: a subset of the data is read
    repository = open_repository(repo)
    accepted: list[str] | None = None
    if accept_rollback:
        accepted = repository.accept_rollback()
        if not json_out:
            console_err.print(
                f"accepted the repository as it is: {len(accepted)} restore point(s) this "
                "client had seen are gone; its record now holds the current points and config"
            )
    with byte_progress("checking data", None, read_data and not json_out) as advance:
        report = check_repository(repository, read_data=read_data, subset=share, progress=advance)
    if json_out:
        out = report.to_json()
        if accepted is not None:
            out["accepted_rollback"] = {"gone": accepted}
        emit_json(out)
    else:
        for problem in report.problems:
            detail = visible(problem.detail, backslash=False)
            console_err.print(f"{problem.kind}: {detail}", style="red")
            places = affected_places(problem.affected)
            for line in places[:50]:
                console_err.print(f"  affects {line}")
            if len(places) > 50:
                console_err.print(f"  … and {len(places) - 50} more")
        for warning in report.warnings:
            console_err.print(f"warning: {warning}", style="yellow")
        console_err.print(
            f"checked {report.points} restore point(s), {report.packs} pack(s), "
            f"{report.blobs} chunk(s); {human_bytes(report.bytes_read)} read"
        )
        console_err.print(report.levels.describe(), markup=False)
    if not report.ok:
        raise RepositoryDamaged(len(report.problems))
    if not json_out:
        console_err.print("no errors were found")


def affected_places(affected: list[dict[str, Any]], most: int = 8) -> list[str]:
    """One line per restore point and disk (or file) a problem affects, its offsets listed once
    each (a damaged frame and its pieces share an offset; ``--json`` keeps every chunk)."""
    offsets: dict[tuple[str, str, str], set[int]] = {}
    for a in affected:
        where = f"disk {a['disk']}" if a.get("disk") is not None else visible(a["path"])
        offsets.setdefault((a["point"], a["name"], where), set()).add(int(a["offset"]))
    lines = []
    for (point, name, where), found in offsets.items():
        shown = sorted(found)
        listed = ", ".join(map(str, shown[:most])) + (
            f" … ({len(shown)} in all)" if len(shown) > most else "")
        label = "offset" if len(shown) == 1 else "offsets"
        lines.append(f"{point[:8]} ({visible(name)}) {where} {label} {listed}")
    return lines


def _names_of_several_vms(points: list[Any]) -> set[str]:
    """Names VM points of more than one VM (instance UUID) carry: VM names are unique per
    vSphere folder only, so ``list`` shows such points' folders beside the name."""
    seen: dict[str, set[str]] = {}
    for p in points:
        if p.kind == "vm" and p.meta.get("instance_uuid"):
            seen.setdefault(p.name, set()).add(str(p.meta["instance_uuid"]))
    return {name for name, vms in seen.items() if len(vms) > 1}


def _vm_folder(point: Any) -> str:
    """The folder a VM point's VM was in (``/DC1/vm/teamA``; in a vApp, the vApp's path below
    it: ``/DC1/vm/teamA/app1``), else its instance UUID."""
    config = point.meta.get("vm_config") or {}
    folder = config.get("folder")
    if not folder:
        return str(point.meta.get("instance_uuid") or "?")
    vapp = config.get("vapp")
    return f"{str(folder).rstrip('/')}/{vapp}" if vapp else str(folder)


def _columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, two spaces apart, never wrapped or cut (rich's ``Table`` lays out
    100 rows in ~0.1 s, a fifth of the start-up budget of ``list``).  Cells are already
    :func:`visible`; widths are terminal cells (wide characters count twice)."""
    from rich.cells import cell_len

    table = [header, *rows]
    widths = [max(cell_len(r[i]) for r in table) for i in range(len(header))]
    lines = (
        "  ".join(c + " " * (w - cell_len(c)) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in table
    )
    return "\n".join(lines)


def _protected_cell(record: Any) -> str:
    """The *Protected* column: the note, "yes", or that the record cannot be read."""
    if record.damaged:
        return "yes (record unreadable)"
    return visible(record.note) or "yes"
