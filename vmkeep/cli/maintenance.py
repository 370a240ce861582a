"""``vmkeep forget``, ``prune``, ``stats`` and ``unlock``: repository maintenance verbs."""

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
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import app
from vmkeep.errors import UsageError

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")]


@app.command("forget")
def forget_cmd(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Restore points to forget (ids or prefixes).")
    ] = None,
    keep_last: Annotated[int, typer.Option(min=0, help="Keep the N newest points.")] = 0,
    keep_hourly: Annotated[int, typer.Option(min=0, help="Keep the newest of N hours.")] = 0,
    keep_daily: Annotated[int, typer.Option(min=0, help="Keep the newest of N days.")] = 0,
    keep_weekly: Annotated[int, typer.Option(min=0, help="Keep the newest of N weeks.")] = 0,
    keep_monthly: Annotated[int, typer.Option(min=0, help="Keep the newest of N months.")] = 0,
    keep_yearly: Annotated[int, typer.Option(min=0, help="Keep the newest of N years.")] = 0,
    keep_within: Annotated[
        str | None,
        typer.Option(help="Keep points within this long of the newest, e.g. 30d, 1y2w, 12h "
                          "(y: 365 days, m: minutes; at most 1000y)."),
    ] = None,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Only this VM / source (repeatable).")
    ] = None,
    dry_run: DryRunOpt = False,
    prune_after: Annotated[bool, typer.Option("--prune", help="Run prune afterwards.")] = False,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Forget restore points by keep rules (per VM / source) or by id; prune frees the data."""
    from vmkeep.storage.retention import Policy, parse_duration

    setup_logging(verbose)
    try:
        within = parse_duration(keep_within) if keep_within else None
    except ValueError as exc:
        raise UsageError(f"--keep-within: {exc}") from None
    policy = Policy(
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, within
    )
    if ids and not policy.empty():
        raise UsageError("give restore point ids or --keep-* rules, not both")
    if not ids and policy.empty():
        raise UsageError("nothing to do: give --keep-* rules or restore point ids")
    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.maintenance_specs import RetentionSpec
    from vmkeep.jobs.retention import retention

    done = run_job(
        retention, RetentionSpec, orchestrate,
        repo=require_repo(repo), ids=list(ids or []), keep_last=keep_last,
        keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within,
        names=list(name or []), prune_after=prune_after and not dry_run, dry_run=dry_run,
    )
    result: dict[str, Any] = {
        "dry_run": dry_run,
        "forgotten": [p["id"] for p in done["forgotten"]],
        "kept": done["kept"],
    }
    if not ids:
        result = {"dry_run": dry_run, "policy": done["policy"], **result}
        if not json_out:
            shown = [(p, True) for p in done["kept"]] + [(p, False) for p in done["forgotten"]]
            shown.sort(key=lambda e: (e[0]["time"], e[0]["id"]), reverse=True)
            shown.sort(key=lambda e: (e[0]["kind"], e[0]["name"]))  # as decided: groups, newest
            for p, keep in shown:
                mark = "keep  " if keep else "forget"
                why = ",".join(p.get("reasons", []))
                console_out.print(
                    f"{mark} {p['id'][:8]} {p['time'][:19].replace('T', ' ')} "
                    f"{p['kind']}:{visible(p['name'])} {why}",
                    markup=False,
                )
    if done["prune"]:
        result["prune"] = done["prune"]
    seen = {p["name"] for p in [*done["kept"], *done["forgotten"]]}
    if unknown := [n for n in dict.fromkeys(name or []) if n not in seen]:  # a typo kept all
        console_err.print(f"note: no restore point is named {', '.join(map(repr, unknown))} "
                          "(`vmkeep list` shows the names)", markup=False)
    if json_out:
        emit_json(result)
        return
    verb = "would forget" if dry_run else "forgot"
    console_err.print(f"{verb} {len(result['forgotten'])} restore point(s)")
    if done["prune"]:
        _print_prune(done["prune"])


def _print_prune(r: dict[str, object]) -> None:
    verb = "would delete" if r.get("dry_run") else "deleted"
    freed = "would free at most" if r.get("dry_run") else "freed"
    console_err.print(
        f"{r['points']} restore point(s) reference {r['referenced_blobs']} chunk(s); "
        f"{verb} {r['packs_deleted']} pack(s) ({r['packs_repacked']} repacked into "
        f"{r['packs_written']}), {r['unindexed_packs_deleted']} unindexed pack(s); "
        f"{freed} {human_bytes(int(str(r.get('bytes_freed', 0))))}"
    )
    if r.get("packs_held_by_grace"):
        console_err.print(
            f"held by the grace period: {r['packs_held_by_grace']} pack(s) with "
            f"{human_bytes(int(str(r['bytes_held_by_grace'])))} unreferenced (younger than "
            "--grace: a backup may still be writing them)"
        )
    if r.get("packs_held_by_leases"):
        holders = r.get("held_by") or []
        console_err.print(
            f"held by running backups/readers: {r['packs_held_by_leases']} pack(s), "
            f"{human_bytes(int(str(r['bytes_held_by_leases'])))}, out of the index and deleted "
            "by the next prune once these end:",
            markup=False,
        )
        for holder in holders if isinstance(holders, list) else []:
            console_err.print(f"  {holder}", markup=False)
    if r.get("catalogs_deleted") or r.get("temp_files_deleted"):
        console_err.print(
            f"removed {r.get('catalogs_deleted', 0)} orphaned catalog(s), "
            f"{r.get('temp_files_deleted', 0)} leftover temporary file(s) "
            f"({human_bytes(int(str(r.get('temp_bytes_deleted', 0))))})"
        )
    if r["missing_blobs"]:
        console_err.print(
            f"{r['missing_blobs']} referenced chunk(s) are missing: run `vmkeep check`",
            style="red",
        )


@app.command("prune")
def prune_cmd(
    grace: Annotated[
        str, typer.Option(help="Never delete objects younger than this (e.g. 4h, 24h, 0s).")
    ] = "4h",
    repack_below: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Repack packs whose used share is below this."),
    ] = 0.5,
    max_unused: Annotated[
        str,
        typer.Option(
            help="Repack (most unused first) while unused space exceeds this share of the "
            "kept packs, e.g. 10%, 0% (like restic's --max-unused)."
        ),
    ] = "10%",
    dry_run: DryRunOpt = False,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Delete data no restore point references; runs beside backups and restores."""
    from vmkeep.storage.retention import parse_duration

    setup_logging(verbose)
    try:
        parse_duration(grace)
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None
    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.maintenance_specs import PruneSpec
    from vmkeep.jobs.retention import prune

    report = run_job(
        prune, PruneSpec, orchestrate,
        repo=require_repo(repo), grace=grace, repack_below=repack_below,
        max_unused=_share(max_unused), dry_run=dry_run,
    )
    if json_out:
        emit_json(report)
        return
    if dry_run:
        console_err.print("dry run: nothing was deleted")
    _print_prune(report)


def _share(text: str) -> float:
    """``"10%"`` or ``"0.1"`` → 0.1; a :class:`UsageError` otherwise."""
    try:
        value = float(text.strip().removesuffix("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        raise UsageError(f"--max-unused: not a share: {text!r}") from None
    if not 0 <= value <= 1:
        raise UsageError(f"--max-unused: must be between 0% and 100%, not {text!r}")
    return value


@app.command("stats")
def stats_cmd(
    grace: Annotated[str, typer.Option(help="The grace prune would use (e.g. 4h, 0s).")] = "4h",
    levels: Annotated[
        bool,
        typer.Option(
            "--levels",
            help="Also read every pack's trailer: the zstd levels each pack records.",
        ),
    ] = False,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Referenced and unreferenced bytes, what prune holds back, each point's unique bytes, and
    the target's free space (local, NFS, SMB)."""
    from vmkeep.storage.retention import parse_duration
    from vmkeep.storage.stats import repository_stats

    setup_logging(verbose)
    try:
        grace_td = parse_duration(grace)
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None
    repository = open_repository(repo)
    stats = repository_stats(repository, grace=grace_td)
    level_json: dict[str, Any] | None = None
    level_line = ""
    if levels:
        from vmkeep.storage.pack_levels import levels_json, pack_levels

        summary, per_pack = pack_levels(repository)
        level_json, level_line = levels_json(summary, per_pack), summary.describe()
    from vmkeep.storage.target_space import free_space

    space = free_space(repository)  # None: the target cannot tell (SFTP, S3)
    if json_out:
        out = stats.to_json()
        out["target"] = space
        if level_json is not None:
            out["zstd_levels"] = level_json
        emit_json(out)
        return
    console_out.print(
        f"{stats.points} restore point(s), {stats.packs} pack(s), "
        f"{human_bytes(stats.pack_bytes)} stored: {human_bytes(stats.referenced_bytes)} "
        f"referenced, {human_bytes(stats.unreferenced_bytes)} unreferenced "
        f"({human_bytes(stats.held_by_grace_bytes)} held by the grace period, "
        f"{human_bytes(stats.held_by_leases_bytes)} by running backups/readers)",
        markup=False,
    )
    for p in stats.per_point:
        console_out.print(
            f"{p['short_id']} {p['time'][:19]} {p['kind']}:{p['name']} "
            f"unique {human_bytes(int(p['unique_bytes']))}",
            markup=False,
        )
    if space is not None:
        console_out.print(
            f"target: {human_bytes(space['free'])} free of {human_bytes(space['total'])} "
            f"({space['free_percent']:.1f} %)", markup=False)
    if level_line:
        console_out.print(level_line, markup=False)


@app.command("unlock")
def unlock_cmd(
    repo: RepoOpt = "",
    remove_all: Annotated[
        bool,
        typer.Option(
            "--remove-all",
            help="Remove every lock, live ones too (only when no vmkeep process is running).",
        ),
    ] = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """List repository locks; remove the stale ones and objects that are not valid locks
    (never a live owner's lock unless --remove-all)."""
    from vmkeep.storage.locks import LockInfo, list_locks, remove_stale

    setup_logging(verbose)
    repository = open_repository(repo)
    removed = remove_stale(repository.backend, remove_all=remove_all)
    remaining = list_locks(repository.backend)

    def shown(i: LockInfo) -> dict[str, Any]:
        return i.to_json() | {
            "id": i.id, "age_s": round(i.age().total_seconds()), "problem": i.problem or None,
            "owner_gone": i.owner_gone(),
        }

    if json_out:
        emit_json(
            {"removed": [shown(i) for i in removed], "remaining": [shown(i) for i in remaining]}
        )
        return
    for info in removed:
        stale = "" if info.problem else "stale " if info.is_stale() else "live "
        console_err.print(f"removed {stale}{info.describe()}")
    for info in remaining:
        if info.owner_gone():  # a killed run's lock: say when it stops counting
            console_err.print(f"{info.describe()}: its process is gone; stale at "
                              f"{info.stale_at():%H:%M} UTC (or `vmkeep unlock --remove-all` "
                              "once no vmkeep process uses the repository)")
        else:
            console_err.print(f"live {info.describe()}")
    if not removed and not remaining:
        console_err.print("no locks")
