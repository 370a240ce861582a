"""``vmkeep doctor``: check this data mover against a vCenter (privileges, hosts, datastores and
transports, VMs), or print the vSphere role vmkeep needs (``--print-role``).

Exit code 0 when nothing stops backups, 1 when problems were found (listed last)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    VerboseOpt,
    above_zero,
    console_out,
    emit_json,
    setup_logging,
    visible,
)
from vmkeep.cli.main import app
from vmkeep.cli.vcenter_opts import NO_VCENTER, vcenter_options
from vmkeep.errors import UsageError
from vmkeep.jobs.limits import MAX_HOST_TIMEOUT_S
from vmkeep.vsphere.target import VCenterTarget

LEVEL_MARK = {"ok": "ok", "info": "ok", "warning": "WARN", "problem": "PROBLEM"}


@app.command("doctor")
@vcenter_options
def doctor_cmd(
    vc: VCenterTarget = NO_VCENTER,
    print_role: Annotated[
        bool, typer.Option("--print-role", help="Print the vSphere role vmkeep needs (JSON).")
    ] = False,
    mover: Annotated[
        str | None,
        typer.Option(help="The data-mover VM this runs in (default: found by BIOS UUID)."),
    ] = None,
    host_timeout: Annotated[
        float, typer.Option(callback=above_zero(MAX_HOST_TIMEOUT_S),
                            help="Seconds to wait for each host's HTTPS endpoint.")
    ] = 5.0,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Check privileges, hosts' port 443, datastore transports and every VM; exit 1 on problems."""
    setup_logging(verbose)
    if print_role:
        from vmkeep.vsphere.privileges import role_document

        emit_json(role_document())
        return
    if not vc.url:
        raise UsageError("--vcenter URL is needed (or --print-role)")
    from vmkeep.settings import settings
    from vmkeep.tasks.vcenter import open_session
    from vmkeep.vsphere.doctor import diagnose

    conf = settings()
    session = open_session(vc)
    try:
        report = diagnose(session, mover=mover, host_timeout=host_timeout,
                          free_percent=(conf.datastore_warn_free_percent,
                                        conf.datastore_skip_free_percent))
    finally:
        session.close()
    if json_out:
        emit_json(report.to_json())
    else:
        _print(report.to_json())
    if not report.ok:
        raise typer.Exit(1)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(visible("" if v is None else v, backslash=False) for v in r))
    console_out.print(table)


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value:g} %"


def _print(doc: dict[str, Any]) -> None:
    console_out.print(f"vmkeep doctor: {doc['server']} at {doc['endpoint']} as {doc['user']}"
                      f"{', mover VM ' + doc['mover'] if doc['mover'] else ''}")
    missing = doc["privileges"]["missing"]
    _table(
        f"Privileges (role of {len(doc['privileges']['role'])}; vmkeep doctor --print-role)",
        ["privilege", "status", "why vmkeep needs it", "missing on"],
        [[m["privilege"], "MISSING", m["why"], f"{len(m['entities'])}: "
          + ", ".join(m["entities"][:3]) + (" …" if len(m["entities"]) > 3 else "")]
         for m in missing] or [["all", "ok", "every privilege of the role is granted", ""]],
    )
    _table("Hosts (HTTPS endpoint from this mover)", ["host", "state", "endpoint", "check", ""],
           [[h["name"], h["connection"], f"{h['address']}:{h['port']}",
             LEVEL_MARK[h["level"]], h["detail"]] for h in doc["hosts"]])
    _table("Datastores", ["datastore", "type", "hosts", "free", "transport", "why"],
           [[d["name"], d["type"], str(d["hosts"]), _percent(d["free_percent"]), d["transport"],
             d["reason"]] for d in doc["datastores"]])
    _table("VMs", ["VM", "hw", "CBT", "power", "transports", "check", "notes"],
           [[v["name"], v["hw_version"], v["cbt"], v["power"], ",".join(v["transports"]),
             LEVEL_MARK[v["level"]], "; ".join(f["reason"] for f in v["findings"])]
            for v in doc["vms"]])
    for w in doc["warnings"]:
        console_out.print(f"warning: {w}")
    for p in doc["problems"]:
        console_out.print(f"PROBLEM: {p}")
    console_out.print("no problems found" if doc["ok"] else f"{len(doc['problems'])} problem(s)")
