"""``vmkeep license``: plan the licences a setup needs, install a licence, show it, and compare it
with what is protected.

* ``plan ENV.json`` | ``plan --inventory INV.json`` | ``plan --vcenter HOST`` [``--json``]
* ``install FILE``, ``show``, ``status [--catalog ITEMS.json]`` [``--json``]
* ``report [--repo R …] [--prefect]``: the ``licence-report`` job (the weekly deployment's), now

``status`` shows the tier (a licence, or the community tier when none is installed) and counts
usage from this installation's ledger plus any ``--repo``/``--catalog``; it exits 0 when the
licence or the community tier covers all usage, 17 otherwise (invalid, expired, or over);
``--json`` always prints the full report.  See docs/licensing.md.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from vmkeep import clock
from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    console_err,
    console_out,
    emit_json,
    given_location,
    given_path,
)
from vmkeep.errors import InputError
from vmkeep.licensing.check import TIER_COMMUNITY, TIER_LICENSED
from vmkeep.licensing.gate import usage_report
from vmkeep.licensing.model import COMMUNITY_WORKLOADS, Usage
from vmkeep.licensing.planner import environment_from_inventory, parse_environment, plan
from vmkeep.licensing.report import render_plan_text, table_rows
from vmkeep.licensing.store import install as install_licence
from vmkeep.licensing.store import licence_path, public_key, read_licence
from vmkeep.licensing.usage import ProtectedItem, usage_from_items
from vmkeep.settings import settings

license_app = typer.Typer(
    help="Licences: plan what a setup needs, install, show, status.", no_args_is_help=True
)

LicenceFileOpt = Annotated[
    str | None,
    typer.Option(
        "--license-file",
        envvar="VMKEEP_LICENSE",
        parser=given_location,
        help="Installed licence path (default: $VMKEEP_CONFIG_DIR/license.json).",
    ),
]
CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="JSON list of protected items (the repository's catalog) to count usage from.",
        parser=given_path,
    ),
]
WindowOpt = Annotated[
    int | None,
    typer.Option("--window-days", min=1, max=36500,
                 help="Count catalog items of the last N days only."),
]
WorkloadWindowOpt = Annotated[
    int, typer.Option("--window-days", min=1, max=36500,
                      help="Count workloads of the last N days.")
]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None


def _repo_items(repo: str) -> list[ProtectedItem]:
    """A repository's restore points as protected items (what vmkeep protects there)."""
    from vmkeep.storage.repository import Repository
    from vmkeep.tasks.catalog import catalog_items

    return catalog_items(Repository.open(repo))


def _catalog_items(catalog: Path) -> list[ProtectedItem]:
    data = _read_json(catalog, "catalog")
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InputError(f"catalog {catalog}: expected a list of items or {{'items': [...]}}")
    try:
        return [ProtectedItem.from_dict(i) for i in items]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"catalog {catalog}: bad item ({exc})") from None


def _catalog_usage(catalog: Path | None, window_days: int | None) -> Usage:
    if catalog is None:
        return Usage()
    since = clock.now() - timedelta(days=window_days) if window_days else None
    return usage_from_items(_catalog_items(catalog), since)


def _tape_libraries(specs: list[str]) -> dict[str, int]:
    libs: dict[str, int] = {}
    for spec in specs:
        name, sep, slots = spec.rpartition(":")
        if not sep or not name or not slots.isdigit():
            raise InputError(f"--tape-library expects NAME:SLOTS, got {spec!r}")
        libs[name] = int(slots)
    return libs


def _vcenter_inventory(
    endpoint: str, cafile: str | None, thumbprint: str | None, insecure: bool, templates: bool
) -> dict[str, Any]:
    """The live inventory as ``{"hosts": [{"name", "vms": [{"name", "uuid"}]}]}``.

    Credentials come from ``VMKEEP_VC_USER`` and ``VMKEEP_VC_PASSWORD``/``_FILE``.
    """
    from vmkeep.vsphere.connection import connect
    from vmkeep.vsphere.credentials import from_env
    from vmkeep.vsphere.inventory import list_vms
    from vmkeep.vsphere.tls import TLSOptions

    tls = TLSOptions(cafile=cafile, thumbprint=thumbprint, insecure=insecure)
    with connect(endpoint, from_env(), tls) as session:
        vms = list_vms(session)
    hosts: dict[str, list[dict[str, Any]]] = {}
    for vm in vms:
        if vm.template and not templates:
            continue
        hosts.setdefault(vm.host or "(no host)", []).append(
            {"name": vm.name, "uuid": vm.instance_uuid}
        )
    return {"hosts": [{"name": h, "vms": v} for h, v in sorted(hosts.items())]}


@license_app.command("plan")
def plan_cmd(
    env_file: Annotated[
        Path | None,
        typer.Argument(metavar="[ENV.json]", parser=given_path,
                       help="Setup description (see docs)."),
    ] = None,
    inventory: Annotated[
        Path | None,
        typer.Option("--inventory", parser=given_path,
                     help="Plan from an inventory JSON (hosts with VMs)."),
    ] = None,
    vcenter: Annotated[
        str | None, typer.Option("--vcenter", help="Plan from a live vCenter/ESXi inventory.")
    ] = None,
    cafile: Annotated[
        str | None, typer.Option("--cafile", parser=given_location, help="vCenter CA bundle.")
    ] = None,
    thumbprint: Annotated[
        str | None, typer.Option("--thumbprint", help="vCenter certificate SHA-256.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not verify vCenter's certificate.")
    ] = False,
    templates: Annotated[
        bool, typer.Option("--templates", help="Count templates as protected VMs.")
    ] = False,
    client: Annotated[
        list[str] | None,
        typer.Option("--client", help="A guest (name or uuid) with a file-level client."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="A VM (name or uuid) not protected by image backup."),
    ] = None,
    other_clients: Annotated[
        int, typer.Option("--other-clients", min=0, help="Physical file-level clients.")
    ] = 0,
    remote_devices: Annotated[
        int, typer.Option("--remote-devices", min=0, help="LAN-free data movers (SRDs).")
    ] = 0,
    tape_library: Annotated[
        list[str] | None,
        typer.Option("--tape-library", help="A tape library or autoloader in use: NAME:SLOTS."),
    ] = None,
    catalog: CatalogOpt = None,
    window_days: WindowOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Work out the licences a setup needs."""
    sources = [x for x in (env_file, inventory, vcenter) if x is not None]
    if len(sources) != 1:
        raise InputError("give exactly one of ENV.json, --inventory or --vcenter")
    if env_file is not None:
        extra = [client, exclude, tape_library]
        if any(extra) or other_clients or remote_devices:
            raise InputError(
                "--client/--exclude/--other-clients/--remote-devices/--tape-library go with "
                "--inventory or --vcenter; ENV.json says it all"
            )
        env = parse_environment(_read_json(env_file, "setup file"))
    else:
        inv = (
            _read_json(inventory, "inventory")
            if inventory is not None
            else _vcenter_inventory(str(vcenter), cafile, thumbprint, insecure, templates)
        )
        env = environment_from_inventory(
            inv,
            clients=client or [],
            exclude=exclude or [],
            other_clients=other_clients,
            remote_devices=remote_devices,
            tape_libraries=_tape_libraries(tape_library or []),
        )
    result = plan(env, _catalog_usage(catalog, window_days) if catalog else None)
    if as_json:
        emit_json(result.as_dict())
        return
    console_out.print(
        render_plan_text(result.requirements, result.notes), end="", markup=False, soft_wrap=True
    )


@license_app.command("install")
def install_cmd(
    file: Annotated[
        Path, typer.Argument(parser=given_path, help="The licence file from the vendor.")
    ],
    license_file: LicenceFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a licence file and install it for this installation."""
    licence, where = install_licence(file, license_file, clock.now())
    if as_json:
        emit_json({"installed": str(where), "licence": licence.as_dict()})
        return
    console_err.print(
        f"installed licence {licence.licence_id} for {licence.customer}"
        f" (valid until {licence.expires.isoformat()}) at {where}",
        markup=False,
    )


@license_app.command("show")
def show_cmd(license_file: LicenceFileOpt = None, as_json: JsonOpt = False) -> None:
    """Show the installed licence (verified; exit 17 when missing, tampered or wrong key)."""
    where = licence_path(license_file)
    licence = read_licence(where, public_key())
    now = clock.now()
    problem = licence.problem_at(now)
    if as_json:
        emit_json(
            {
                "path": str(where),
                "licence": licence.as_dict(),
                "valid": problem is None,
                "problem": problem.get_message() if problem else None,
                "days_left": licence.days_left(now),
            }
        )
        return
    lines = [
        f"Licence      {licence.licence_id}",
        f"Customer     {licence.customer}",
        f"Issued       {licence.issued.isoformat()}",
        f"Expires      {licence.expires.isoformat()}"
        + (f"  ({licence.days_left(now)} day(s) left)" if problem is None else ""),
        f"Signing key  {licence.key_id}",
        f"File         {where}",
        "",
        render_plan_text(licence.counts).rstrip("\n"),
    ]
    if problem is not None:
        lines += ["", f"NOT VALID: {problem.get_message()}"]
    console_out.print("\n".join(lines), markup=False, soft_wrap=True)


@license_app.command("status")
def status_cmd(
    license_file: LicenceFileOpt = None,
    catalog: CatalogOpt = None,
    window_days: WorkloadWindowOpt = 90,
    repo: Annotated[
        list[str] | None,
        typer.Option(
            "--repo",
            "-r",
            help="Also count this repository's restore points (repeatable; default"
            " $VMKEEP_REPO).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tier and used vs licensed; exit 17 unless the licence or community tier covers all usage.

    Usage is this installation's ledger (every workload it backed up, whatever the repository)
    plus the restore points of every ``--repo`` and the items of ``--catalog``.
    """

    repos = list(repo or [r for r in [settings().repo] if r])
    items: list[ProtectedItem] = []
    for location in repos:
        items += _repo_items(location)
    if catalog is not None:
        items += _catalog_items(catalog)
    decision = usage_report(
        items, licence_file=license_file, window=timedelta(days=window_days)
    )
    path = licence_path(license_file)
    if as_json:
        emit_json({"path": str(path), "repositories": repos, **decision.as_dict()})
    else:
        out: list[str] = []
        if decision.tier == TIER_LICENSED and decision.licence is not None:
            lic = decision.licence
            out.append(
                f"Tier: licensed — {lic.licence_id} for {lic.customer}, expires"
                f" {lic.expires.isoformat()} ({lic.days_left(decision.checked_at)} day(s) left)"
            )
        elif decision.tier == TIER_COMMUNITY:
            out.append(
                f"Tier: community (no licence installed at {path}): up to"
                f" {COMMUNITY_WORKLOADS} workloads, no SAN remote device, no tape autoloader"
            )
            clients = decision.used_skus.backup_client
            seats = decision.meters[0].used - clients
            hosts = decision.used_skus.esx_server_client_5seat
            out.append(
                f"{seats + clients} workload(s): {seats} guest seat(s), {clients} backup"
                f" client(s); {hosts} ESX host(s), included"
            )
        elif decision.problem is not None:
            out.append(f"Tier: none — licence unusable: {decision.problem.get_message()}")
        out.append(
            f"(usage: this installation's ledger, last {window_days} days"
            + (f", plus {len(repos)} repository(ies)" if repos else "")
            + (", plus the catalog file" if catalog is not None else "")
            + ")"
        )
        rows = table_rows(decision)
        headers = ["meter", "sku", "used", "licensed", "percent", "state"]
        widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
        out.append("")
        out.append("  ".join(h.upper().ljust(widths[h]) for h in headers))
        for r in rows:
            out.append("  ".join(str(r[h]).ljust(widths[h]) for h in headers))
        if decision.shortfall:
            out.append("")
            out.append(
                "Missing: "
                + ", ".join(f"{n}× {sku.label}" for sku, n in decision.shortfall.items())
            )
        for w in decision.warnings:
            out.append(f"warning: {w}")
        console_out.print("\n".join(out), markup=False, soft_wrap=True)
    if not decision.compliant:
        raise typer.Exit(17)


from vmkeep.cli import main as _main  # noqa: E402  (registers on import, see vmkeep/cli/main.py)

_main.app.add_typer(license_app, name="license")


@license_app.command("report")
def report_cmd(
    license_file: LicenceFileOpt = None,
    window_days: WorkloadWindowOpt = 90,
    repo: Annotated[
        list[str] | None,
        typer.Option(
            "--repo", "-r", help="Count this repository's restore points (repeatable; default"
            " $VMKEEP_REPO).",
        ),
    ] = None,
    orchestrate: OrchestrateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the licence report (the `licence-report` flow) now: usage over the repositories and
    this installation's ledger against the licence; never refuses (exit 0), `compliant` says.

    Under Prefect (`--prefect`, or an API configured) the report is a flow run with its
    artifacts; `status` is the terminal view with its exit code.
    """
    import os

    from vmkeep.cli.run_job import run_job
    from vmkeep.jobs.licence_report import licence_report
    from vmkeep.jobs.maintenance_specs import LicenceReportSpec

    repos = list(repo or ([os.environ["VMKEEP_REPO"]] if os.environ.get("VMKEEP_REPO") else []))
    result = run_job(licence_report, LicenceReportSpec, orchestrate, repos=repos,
                     window_days=window_days, licence_file=license_file)
    if as_json:
        emit_json(result)
        return
    verdict = "compliant" if result["compliant"] else "NOT compliant"
    out = [f"Tier: {result['tier']}, {verdict} (last {window_days} days, "
           f"{len(repos)} repository(ies) and this installation's ledger)"]
    for m in result["meters"]:
        licensed = "unlimited" if m["licensed"] is None else m["licensed"]
        out.append(f"  {m['title']}: {m['used']} of {licensed}")
    out += [f"warning: {w}" for w in result["warnings"]]
    console_out.print("\n".join(out), markup=False, soft_wrap=True)
