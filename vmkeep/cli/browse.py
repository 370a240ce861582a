"""``vmkeep ls`` and ``vmkeep find``: browse restore points without restoring anything.

``ls POINT`` lists an image or VM point's disks and volumes; ``ls POINT:VOLUME/PATH`` a directory
of a volume (``POINT:/PATH`` for file restore points).  ``find PATTERN`` searches file names
across restore points (catalogs are built on first use, see :mod:`vmkeep.browse.catalog`).
Library calls only: no flow, no Prefect import.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    console_out,
    emit_json,
    human_bytes,
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import app
from vmkeep.cli.restore_opts import open_repo


@app.command("ls")
def ls_cmd(
    ref: Annotated[str, typer.Argument(help="POINT, POINT:VOLUME/PATH, or POINT:/PATH.")],
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """List a restore point's disks and volumes, or a directory inside it."""
    from vmkeep.browse.listing import describe_point, list_files_path, list_image_path, point_header
    from vmkeep.browse.point import PointImage, split_ref, split_volume_path
    from vmkeep.storage.file_manifest import FilePoint, load_any_point

    setup_logging(verbose)
    repository = open_repo(require_repo(repo))
    point_ref, rest = split_ref(ref)
    point = load_any_point(repository, point_ref)
    point_id = point.id
    if isinstance(point, FilePoint):
        path = "/" + (rest or "").lstrip("/")
        rows = list_files_path(repository, point, path)
        out: dict[str, Any] = {
            "point": {"id": point_id, "short_id": point_id[:8], "kind": point.kind},
            "volume": None,
            "path": path,
            "entries": rows,
        }
        if path == "/":  # the point itself: what was proven of it (``verify yara``)
            out["verifications"] = _verifications(repository, point_id)
    else:
        with PointImage(repository, point) as img:
            volume, path = split_volume_path(rest or "")
            if not volume:
                out = describe_point(img)
                out["verifications"] = _verifications(repository, point_id)
            else:
                rows = list_image_path(img, volume, path)
                out = {
                    "point": point_header(img),
                    "volume": img.volume(volume).name,
                    "path": path,
                    "entries": rows,
                }
    if json_out:
        emit_json(out)
    elif "entries" in out:
        _print_entries(out["entries"])
        _print_verifications(out, console_err)  # stdout stays the listing
    else:
        _print_point(out)


def _verifications(repository: Any, point_id: str) -> dict[str, Any]:
    """The newest verification of each kind recorded for the point (``verify fs``)."""
    from vmkeep.storage import verifications

    newest = verifications.latest(repository, point_id)
    return {kind: {"time": v.time, "ok": v.ok, "host": v.host} for kind, v in newest.items()}


def _print_entries(rows: list[dict[str, Any]]) -> None:
    lines = []
    for r in rows:
        link = f" -> {visible(r['link'])}" if r.get("link") else ""
        when = str(r["mtime"])[:19].replace("T", " ")
        note = f"  (file restore cannot read it: {r['elsewhere']})" if r.get("elsewhere") else ""
        lines.append(f"{r['mode_text']} {r['size']:>12} {when} {visible(r['name'])}{link}{note}\n")
    sys.stdout.write("".join(lines))  # one write: rich per line costs seconds on 10,000 rows
    sys.stdout.flush()


def _print_verifications(out: dict[str, Any], console: Any) -> None:
    for kind, v in sorted(out.get("verifications", {}).items()):
        verdict = "passed" if v["ok"] else "FAILED"
        console.print(f"  verify {kind}: {verdict} ({v['time']}, {v['host']})", markup=False)


def _print_point(out: dict[str, Any]) -> None:
    p = out["point"]
    console_out.print(f"{p['short_id']} {visible(p['name'])} ({p['kind']}, {p['time'][:19]})")
    vm = out.get("vm")
    if vm:
        shape = (f"{vm['num_cpu'] or '?'} CPU, {vm['memory_mb'] or '?'} MiB, "
                 f"{vm['firmware'] or 'bios'}, {visible(str(vm['guest_id']))}")
        console_out.print(f"  vm     {shape}, host {visible(str(vm['host']))}", markup=False)
        if vm.get("tags"):
            console_out.print(f"  tags   {visible(', '.join(vm['tags']))}", markup=False)
        for n in vm["nics"]:
            console_out.print(f"  nic    {visible(n['type'])} on {visible(repr(n['network']))}"
                              f"  {visible(str(n['mac']))}", markup=False)
    for d in out["disks"]:
        console_out.print(
            f"  disk{d['index']}  {visible(d['name'])}  {human_bytes(d['size'])}", markup=False
        )
        swap = d.get("swap")
        if swap and swap.get("areas"):
            names = sorted({a["what"] for a in swap["areas"]})
            console_out.print(
                f"    swap left out (zeros): {human_bytes(swap['bytes'])} in "
                f"{visible(', '.join(names))}", markup=False,
            )
        deleted = d.get("deleted")
        if deleted and deleted.get("bytes"):
            console_out.print(f"    deleted data left out (zeros): up to "
                              f"{human_bytes(deleted['bytes'])} of free NTFS space", markup=False)
    for x in out.get("excluded_disks", []):
        console_out.print(
            f"  excluded  {visible(str(x.get('label')))} ({visible(str(x.get('node')))}, "
            f"{human_bytes(int(x.get('capacity') or 0))}): not backed up "
            f"(rule {visible(repr(x.get('rule')))})", markup=False,
        )
    for v in out["volumes"]:
        label = f"  [{visible(v['label'])}]" if v.get("label") else ""
        console_out.print(
            f"    {visible(v['name']):<20} {v['fs'] or '-':<7} {human_bytes(v['size']):>11}{label}",
            markup=False,
        )
    _print_verifications(out, console_out)
    for w in out["warnings"]:
        console_err.print(f"warning: {w}", markup=False)


@app.command("find")
def find_cmd(
    pattern: Annotated[str, typer.Argument(help="Glob on file names (a '/' matches paths).")],
    name: Annotated[str | None, typer.Option("--name", help="Only this VM / source.")] = None,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Search file names across restore points (case-insensitive glob)."""
    from vmkeep.browse.catalog import find

    setup_logging(verbose)
    repository = open_repo(require_repo(repo))
    built: list[str] = []
    warnings: list[tuple[str, str]] = []
    if not json_out and console_err.is_terminal:
        console_err.print("searching (catalogs are built on first use)…")
    found = find(repository, pattern, name, built=built, warnings=warnings)
    matches = [m.to_json() for m in found]
    if json_out:
        emit_json({
            "pattern": pattern, "matches": matches, "catalogs_built": built,
            "warnings": [{"point": p, "warning": w} for p, w in warnings],
        })
        return
    for m in matches:  # the file's modification time (the point is in the ref), as restic's
        modified = (m.get("mtime") or "-")[:19]
        console_out.print(
            f"{visible(m['ref'])}  {m['type']:<7} {m['size']:>12}  {modified}", markup=False
        )
    for point, warning in warnings:
        console_err.print(f"warning: {point[:8]}: not searched in full: {visible(warning)}",
                          markup=False)
    console_err.print(f"{len(matches)} match(es)")
    if not matches and "/" in pattern and not pattern.startswith(("/", "*")):
        console_err.print(f"(a pattern with '/' matches whole paths from a volume's root: "
                          f"'/{pattern}', or '**/{pattern}' at any depth)", markup=False)
