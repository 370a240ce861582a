"""``vmkeep serve``: start a Prefect server, create the pools, deploy, run a local data mover.

See :mod:`vmkeep.deployments.serve` for the steps; this module only parses options.  Site
settings become the ``vmkeep_*`` Prefect variables ``vmkeep/deployments/prefect.yaml`` reads; the
vCenter password comes from ``VMKEEP_VC_PASSWORD`` (saved as a Secret block, never printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vmkeep.cli.common import console_err, given_location, given_path
from vmkeep.cli.main import app
from vmkeep.errors import UsageError

LOCATIONS = ("lan", "san", "staging")


def _variables(
    vcenter: str | None,
    user: str | None,
    cafile: str | None,
    repo: str | None,
    repo_san: str | None,
    vms: list[str] | None,
    settings: list[str] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (
        ("vmkeep_vcenter", vcenter),
        ("vmkeep_vcenter_user", user),
        ("vmkeep_vcenter_cafile", str(Path(cafile).resolve()) if cafile else None),
        ("vmkeep_repo_lan", repo),
        ("vmkeep_repo_san", repo_san),
        ("vmkeep_vms_lan", vms),
    ):
        if value:
            out[key] = value
    for item in settings or []:
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: want NAME=VALUE (VALUE as JSON or text)")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[name if name.startswith("vmkeep_") else f"vmkeep_{name}"] = value
    return out


def _locations(values: list[str] | None, what: str) -> tuple[str, ...]:
    bad = [v for v in values or [] if v not in LOCATIONS]
    if bad:
        raise UsageError(f"{what}: unknown pool(s) {', '.join(bad)} (use {', '.join(LOCATIONS)})")
    return tuple(values or ())


@app.command("serve")
def serve_cmd(
    vcenter: Annotated[
        str | None, typer.Option(envvar="VMKEEP_VCENTER", help="vCenter/ESXi URL.")
    ] = None,
    user: Annotated[str | None, typer.Option(envvar="VMKEEP_VC_USER", help="vCenter user.")] = None,
    cafile: Annotated[
        str | None,
        typer.Option(parser=given_location, help="CA file for vCenter's certificate."),
    ] = None,
    repo: Annotated[
        str | None,
        typer.Option("--repo", "-r", envvar="VMKEEP_REPO", help="Repository of the LAN mover."),
    ] = None,
    repo_san: Annotated[
        str | None, typer.Option(help="Repository of the remote-device (SAN) mover.")
    ] = None,
    vms: Annotated[
        list[str] | None, typer.Option("--vms", help="VM name pattern for the nightly backup.")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Another vmkeep_* variable: NAME=JSON (e.g. san_mounts=...)."),
    ] = None,
    activate: Annotated[
        list[str] | None,
        typer.Option(help="Switch on the schedules of this pool's deployments (san, staging)."),
    ] = None,
    worker: Annotated[
        list[str] | None, typer.Option(help="Pools to run a local worker for (default: lan).")
    ] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run no local worker.")] = False,
    setup_only: Annotated[
        bool, typer.Option("--setup-only", help="Set up and deploy, then exit.")
    ] = False,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Keep the deployments already on the server.")
    ] = False,
    api_url: Annotated[
        str | None,
        typer.Option(help="Use this Prefect server instead of starting one (…/api)."),
    ] = None,
    home: Annotated[
        Path, typer.Option(parser=given_path,
                           help="State of the server started here (SQLite, logs).")
    ] = Path.home() / ".vmkeep" / "prefect",
    host: Annotated[
        str, typer.Option(help="Address the server listens on (0.0.0.0: remote movers).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the server and its UI.")
    ] = 4200,
    profile: Annotated[
        str,
        typer.Option(help="Prefect profile made to point at the server and activated ('' : none)."),
    ] = "vmkeep",
) -> None:
    """Run vmkeep as scheduled jobs: Prefect server + pools + deployments + a local mover.

    VMKEEP_VC_PASSWORD is saved as the Secret block vmkeep-vcenter-password, VMKEEP_NOTIFY /
    VMKEEP_NOTIFY_FILE / VMKEEP_NOTIFY_ON (where job reports go) as the Secret block
    vmkeep-notify."""
    from vmkeep.deployments import serve as serving

    variables = _variables(vcenter, user, cafile, repo, repo_san, vms, settings)
    workers = () if no_worker else _locations(worker, "--worker") or ("lan",)
    inst = serving.serve(
        home=home,
        port=port,
        host=host,
        api_url=api_url,
        variables=variables,
        activate=_locations(activate, "--activate"),
        workers=workers,
        deploy=not no_deploy,
        setup_only=setup_only,
        profile=profile or None,
        say=lambda text: console_err.print(text, markup=False),
    )
    if setup_only:
        console_err.print(f"set up and deployed on {inst.api_url}", markup=False)
        inst.stop()  # a server started here keeps its state in --home for the next start
        return
    serving.wait(inst, say=lambda text: console_err.print(text, markup=False))
