"""What a vmkeep installation needs on a Prefect server: pools, blocks, variables, deployments,
and the workers (data movers) that serve the pools.

Contract (every function is idempotent; each talks to the server in ``PREFECT_API_URL``):

* :func:`ensure_pools` creates the ``process`` work pools of :data:`POOLS` (one per data-path
  location) that do not exist yet; existing pools are left as the admin configured them.
* :func:`ensure_password_block` saves the vCenter password as the Secret block
  :data:`PASSWORD_BLOCK`; the value is never logged or returned.  :func:`ensure_notify_block`
  saves where job reports go likewise (URLs with passwords, never printed).
* :func:`ensure_variables` sets the ``vmkeep_*`` Prefect variables ``prefect.yaml``
  reads (site settings, JSON values); variables not given keep their value, missing ones get
  :data:`VARIABLE_DEFAULTS`.
* :func:`deploy` runs ``prefect deploy --all --prefect-file <prefect.yaml>`` in a subprocess
  and returns its output; :func:`activate` switches the schedules of every deployment of one pool
  on (``prefect.yaml`` registers the remote-device and staging schedules inactive).
* :func:`start_worker` starts ``prefect worker start --pool … --type process`` as a subprocess
  in its own process group with the given extra environment; :func:`stop_worker` ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmkeep.deployments.prefect_server import PrefectServerError, quiet_prefect_env

#: data-path location -> work pool name
POOLS: dict[str, str] = {
    "lan": "vmkeep-lan",
    "san": "vmkeep-san",
    "staging": "vmkeep-staging",
}
POOL_DESCRIPTIONS = {
    "lan": "LAN data movers: read snapshot disks over HTTPS (https transport)",
    "san": "Remote-device data movers beside the SAN/NAS: direct datastore reads, LAN-free, "
    "writing to their own targets",
    "staging": "Staging proxies: copy snapshot disks to local staging, release the snapshot, "
    "then send over the LAN",
}
PASSWORD_BLOCK = "vmkeep-vcenter-password"
PREFECT_FILE = Path(__file__).with_name("prefect.yaml")
VARIABLE_DEFAULTS: dict[str, Any] = {
    "vmkeep_vcenter": "",
    "vmkeep_vcenter_user": "",
    "vmkeep_vcenter_cafile": "",
    "vmkeep_repo_lan": "",
    "vmkeep_repo_san": "",
    "vmkeep_repo_offsite": "",
    "vmkeep_offsite_limit_upload": "",
    "vmkeep_vms_lan": ["*"],
    "vmkeep_vms_san": [],
    "vmkeep_vms_staging": [],
    "vmkeep_tag_lan": "",
    "vmkeep_tag_san": "",
    "vmkeep_tag_staging": "",
    "vmkeep_exclude_lan": [],
    "vmkeep_exclude_san": [],
    "vmkeep_exclude_staging": [],
    "vmkeep_backup_window": "",
    "vmkeep_exclude_tag": "",
    "vmkeep_exclude_disks": [],
    "vmkeep_yara_rules": [],
    "vmkeep_guest_scripts": {},
    "vmkeep_san_mounts": {},
    "vmkeep_san_device": "",
    "vmkeep_stage_dir": "",
    "vmkeep_files_source": "",
    "vmkeep_files_name": "",
    "vmkeep_tape_library": "",
}

#: Variables ``prefect.yaml`` puts into a worker's environment: always stored as text (a
#: process worker refuses a number there)
TEXT_VARIABLES = frozenset({"vmkeep_offsite_limit_upload"})


def _prefect_cli() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def ensure_pools(locations: list[str] | None = None) -> list[str]:
    """Create the missing pools (all of :data:`POOLS` by default); returns the pool names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    names = []
    with get_client(sync_client=True) as client:
        for location in locations or list(POOLS):
            name = POOLS[location]
            names.append(name)
            try:
                client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type="process",
                        description=POOL_DESCRIPTIONS[location],
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
    return names


def ensure_password_block(password: str) -> None:
    """Save ``password`` as the Secret block :data:`PASSWORD_BLOCK` (overwriting)."""
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    Secret(value=SecretStr(password)).save(PASSWORD_BLOCK, overwrite=True)


def ensure_notify_block() -> str | None:
    """Save where job reports go (this environment's ``VMKEEP_NOTIFY``/``_FILE``/``_ON``) as
    the Secret block :data:`vmkeep.runtime.notify.BLOCK`, which workers without those settings
    read; returns what to tell the user, ``None`` when nothing is configured (an existing block
    is kept)."""
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    from vmkeep.runtime import notify

    config = notify.NotifyConfig.from_settings(strict=True)
    if config is None:
        return None
    value = SecretStr(json.dumps(config.block_value()))
    Secret(value=value).save(notify.BLOCK, overwrite=True)
    on = ", ".join(status for status in notify.STATUSES if status in config.on)
    return (f"job reports ({on}) go to {len(config.urls)} target(s): saved as Secret block "
            f"{notify.BLOCK}")


def ensure_variables(values: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``values`` (names as in :data:`VARIABLE_DEFAULTS`); returns the effective settings."""
    from prefect.variables import Variable

    unknown = set(values) - set(VARIABLE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown vmkeep variables: {', '.join(sorted(unknown))}")
    effective: dict[str, Any] = {}
    for name, default in VARIABLE_DEFAULTS.items():
        current = Variable.get(name, default=None)
        if name in values:
            value = values[name]
        elif current is not None:
            value = current
        else:
            value = default
        if name in TEXT_VARIABLES and value is not None:
            value = str(value)  # an environment value: `--set offsite_limit_upload=10240`
        if value != current:
            Variable.set(name, value, overwrite=True)
        effective[name] = value
    return effective


def deploy(env: Mapping[str, str] | None = None, names: list[str] | None = None) -> str:
    """``prefect deploy --all`` (or ``--name`` each of ``names``) of :data:`PREFECT_FILE`."""
    cmd = [_prefect_cli(), "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE)]
    if names:
        for name in names:
            cmd += ["--name", name]
    else:
        cmd.append("--all")
    full_env = {**os.environ, **quiet_prefect_env(), **(env or {})}
    full_env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    result = subprocess.run(
        cmd, env=full_env, cwd=PREFECT_FILE.parent.parent, capture_output=True, text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise PrefectServerError(
            f"prefect deploy failed ({result.returncode}): {result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}"
        )
    return result.stdout


#: deployments whose schedules `vmkeep serve` switches on (when their settings are complete);
#: prefect.yaml registers every schedule off, so a plain `prefect deploy` starts nothing.
ON_BY_DEFAULT = (
    "nightly-lan", "daily-files", "weekly-lan", "daily-lan", "hourly", "weekly", "hourly-rpo",
    "nightly-offsite",
)


def activate_defaults() -> list[str]:
    """Switch on the schedules of :data:`ON_BY_DEFAULT`; returns the names switched.

    Run :func:`deactivate_incomplete` after it: a default deployment whose settings are empty
    is switched off again, with the reason in its description."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    changed = []
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(ON_BY_DEFAULT)))
        )
        for dep in deployments:
            if not (dep.tags and "vmkeep" in dep.tags):
                continue
            for schedule in client.read_deployment_schedules(dep.id):
                if not schedule.active:
                    client.update_deployment_schedule(dep.id, schedule.id, active=True)
                    changed.append(dep.name)
    return sorted(set(changed))


#: deployments never switched on by :func:`activate` (``serve --activate POOL``): each needs a
#: tape media pool of its own defined first, so an administrator switches it on by itself.
OPT_IN = ("gfs-weekly", "gfs-monthly")


def activate(location: str, active: bool = True) -> list[str]:
    """Switch the schedules of every deployment in ``location``'s pool (switching on leaves
    :data:`OPT_IN` alone); returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    changed = []
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOLS[location]]))
        )
        for dep in deployments:
            if active and dep.name in OPT_IN:
                continue
            for schedule in client.read_deployment_schedules(dep.id):
                if schedule.active != active:
                    client.update_deployment_schedule(dep.id, schedule.id, active=active)
                    changed.append(dep.name)
    return sorted(set(changed))


def start_worker(
    location: str,
    name: str,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    limit: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process worker for ``location``'s pool (its own process group)."""
    cmd = [_prefect_cli(), "worker", "start", "--pool", POOLS[location], "--type", "process",
           "--name", name]
    if limit:
        cmd += ["--limit", str(limit)]
    full_env = {**os.environ, **quiet_prefect_env(), **(env or {})}
    full_env["PREFECT_LOGGING_LEVEL"] = (env or {}).get("PREFECT_LOGGING_LEVEL", "INFO")
    out: Any = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the worker's process group (its flow-run subprocesses too), then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


#: settings a deployment may leave empty (system CA, user from the mover's environment, …)
OPTIONAL_VARIABLES = {
    "vmkeep_vcenter_cafile", "vmkeep_vcenter_user", "vmkeep_san_device",
    "vmkeep_tag_lan", "vmkeep_tag_san", "vmkeep_tag_staging",  # "": no tag selection
    "vmkeep_exclude_lan", "vmkeep_exclude_san", "vmkeep_exclude_staging",  # []: none
    "vmkeep_backup_window",  # "": no backup window
    "vmkeep_exclude_tag",  # "": no exclusion tag
    "vmkeep_exclude_disks",  # []: every disk
    "vmkeep_yara_rules",  # []: no malware scan in the weekly verify
    "vmkeep_guest_scripts",  # {}: no guest scripts
}
_TEMPLATE = re.compile(r"\{\{\s*prefect\.variables\.(\w+)\s*\}\}")


def empty_settings(raw: Any, deployed: Any) -> list[str]:
    """Variables named by templates in ``raw`` (prefect.yaml) whose value in ``deployed`` (the
    deployment's parameters after templating) is empty, optional ones left out."""
    if isinstance(raw, dict) and isinstance(deployed, dict):
        return [v for k in raw for v in empty_settings(raw[k], deployed.get(k))]
    if isinstance(raw, str):
        match = _TEMPLATE.fullmatch(raw.strip())
        if match and match.group(1) not in OPTIONAL_VARIABLES and deployed in ("", None, [], {}):
            return [match.group(1)]
    return []


def deactivate_incomplete() -> dict[str, str]:
    """Switch off (paused, schedules inactive) every deployment whose required settings are
    empty, saying why in its description; returns ``{deployment name: reason}``.

    A deployment with an empty repository, source or name must not run: it would fail, or —
    before specs were validated — commit an empty, nameless restore point.
    """
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    raw = {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
    reasons: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for dep in client.read_deployments():
            want = raw.get(dep.name)
            if want is None or not (dep.tags and "vmkeep" in dep.tags):
                continue
            missing = sorted(set(empty_settings(want.get("parameters", {}), dep.parameters)))
            if not missing:
                continue
            reason = (
                f"INACTIVE: the Prefect variable(s) {', '.join(missing)} are empty; set them "
                "(UI: Variables) and run `vmkeep serve` again."
            )
            for schedule in client.read_deployment_schedules(dep.id):
                if schedule.active:
                    client.update_deployment_schedule(dep.id, schedule.id, active=False)
            description = str(want.get("description") or "").strip()
            client.update_deployment(
                dep.id, DeploymentUpdate(paused=True, description=f"{reason}\n\n{description}")
            )
            reasons[dep.name] = reason
    return reasons
