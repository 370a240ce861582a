"""``vmkeep repair index``: rebuild the index from the packs (as ``restic repair index``).

For a repository whose index files are lost, unreadable or wrong: every command that loads the
index names the unreadable file and points here; ``check`` reports missing or mismatched index
entries.  See :mod:`vmkeep.storage.repair` for what is read, written and deleted, and why it is
safe beside backups.  Exit code 13 when some pack's contents table cannot be read (the rest is
indexed; ``check --read-data`` names what that pack's damage affects).
"""

from __future__ import annotations

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    byte_progress,
    console_err,
    emit_json,
    open_repository,
    setup_logging,
)
from vmkeep.cli.main import app

repair_app = typer.Typer(
    help="Repair a damaged repository: rebuild the index from the packs.", no_args_is_help=True
)
app.add_typer(repair_app, name="repair")


@repair_app.command("index")
def index_cmd(repo: RepoOpt = "", json_out: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Rebuild the index files from the packs' own contents tables (beside backups; not
    beside prune)."""
    from vmkeep.storage.errors import RepositoryDamaged
    from vmkeep.storage.repair import repair_index

    setup_logging(verbose)
    repository = open_repository(repo)
    with byte_progress("indexing packs", None, not json_out) as advance:
        report = repair_index(repository, progress=advance)
    if json_out:
        emit_json(report.to_json())
    else:
        console_err.print(
            f"indexed {report.entries} chunk(s) of {report.packs} pack(s) "
            f"({len(report.packs_newly_indexed)} no index listed); "
            f"{report.entries_corrected} wrong entr(ies) replaced; "
            f"index files: {report.indexes_written} written, {report.indexes_deleted} deleted"
            + (f", {report.indexes_kept} kept" if report.indexes_kept else "")
        )
        for key in report.unreadable_indexes:
            console_err.print(f"replaced unreadable {key}", markup=False)
        if report.packs_left_to_prune:
            console_err.print(
                f"{report.packs_left_to_prune} pack(s) prune has unlisted were left out "
                "(the next prune deletes them)"
            )
        if report.packs_missing:
            console_err.print(
                f"{len(report.packs_missing)} pack(s) the index listed are not stored: "
                "`vmkeep check` names the restore points they affect", style="yellow",
            )
        for pack, why in report.unreadable_packs.items():
            console_err.print(f"unreadable pack {pack[:16]}: {why}", style="red", markup=False)
    if not report.ok:
        raise RepositoryDamaged(len(report.unreadable_packs))
