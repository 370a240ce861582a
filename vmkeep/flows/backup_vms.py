"""Flow: back up many VMs — selected by names, patterns, folder, host, cluster or tag — each as a
``backup-vm`` subflow, concurrently, while per-host and per-datastore snapshot limits hold.

``max_parallel`` bounds how many VM backups run at once in this flow; the snapshot slots of
``tasks/limits.py`` bound how many snapshots exist per host and per datastore (across flows and
workers when orchestrated).  The licence is checked for the whole selection first (one
``licence-check``, before any snapshot): a selection the licence or the community tier cannot
cover is refused as a whole rather than VM by VM.  One VM failing does not stop the others; the
flow fails at the end (:class:`SomeBackupsFailed`, exit code 1) after reporting every VM in a
table artifact.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vmkeep.errors import VmkeepError
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.license_check import check_run
from vmkeep.tasks.runtime import direct_mode, flow, publish_table
from vmkeep.tasks.vcenter import VCenter, open_session
from vmkeep.vsphere.inventory import list_vms, select_vms


class SomeBackupsFailed(VmkeepError):
    """{} of {} VM backup(s) failed: {}"""

    exit_code = 1

    def __init__(self, failed: int, total: int, names: str, summary: dict[str, Any]) -> None:
        super().__init__(failed, total, names)
        self.summary = summary


class NothingSelected(VmkeepError):
    """No VM matches the selection ({})."""

    exit_code = 14


@flow(name="backup-vms", persist_result=False, log_prints=False)
def backup_vms(
    repo: str,
    vcenter: str,
    names: list[str] | None = None,
    patterns: list[str] | None = None,
    folder: str | None = None,
    host: str | None = None,
    cluster: str | None = None,
    tag: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    transport: str = "https",
    datastore_mounts: dict[str, str] | None = None,
    remote_device: str | None = None,
    quiesce: bool = True,
    quiesce_policy: str = "fail",
    enable_cbt: bool = True,
    concurrency: dict[str, int] | None = None,
    max_parallel: int = 4,
    stage_dir: str | None = None,
    scan_every: int = 30,
    cbt_audit: str = "0.5",
) -> dict[str, Any]:
    """Back up every selected VM; returns ``{"vms": [summary | error], "failed": n}``."""
    target = VCenter(vcenter, user, password_file, password_block, cafile, thumbprint, insecure)
    session = open_session(target)
    try:
        chosen = select_vms(
            list_vms(session),
            names=names or (),
            patterns=patterns or (),
            folder=folder,
            host=host,
            cluster=cluster,
            tag=tag,
        )
    finally:
        session.close()
    if not chosen:
        raise NothingSelected(
            ", ".join(
                f"{k}={v}"
                for k, v in locals().items()
                if k in ("names", "patterns", "folder", "host", "cluster", "tag") and v
            )
            or "everything"
        )
    check_run(
        image_vms=[{"host": vm.host or "", "name": vm.name, "uuid": vm.instance_uuid}
                   for vm in chosen],
        remote_device=remote_device if transport == "direct" else None,
        catalog=catalog_items(Repository.open(repo)),
    )
    common: dict[str, Any] = {
        "repo": repo,
        "vcenter": vcenter,
        "user": user,
        "password_file": password_file,
        "password_block": password_block,
        "cafile": cafile,
        "thumbprint": thumbprint,
        "insecure": insecure,
        "transport": transport,
        "datastore_mounts": datastore_mounts,
        "remote_device": remote_device,
        "quiesce": quiesce,
        "quiesce_policy": quiesce_policy,
        "enable_cbt": enable_cbt,
        "scan_every": scan_every,
        "cbt_audit": cbt_audit,
        "concurrency": concurrency,
        "stage_dir": stage_dir,
    }

    def one(vm_uuid: str) -> dict[str, Any]:
        return (
            backup_vm.fn(vm=vm_uuid, **common) if direct_mode() else backup_vm(vm=vm_uuid, **common)
        )

    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max(1, max_parallel), thread_name_prefix="vmkeep-vm") as pool:
        futures = [
            (vm, pool.submit(contextvars.copy_context().run, one, vm.instance_uuid))
            for vm in chosen
        ]
        for vm, future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                message = exc.get_message() if isinstance(exc, VmkeepError) else repr(exc)
                results.append({"vm": vm.name, "instance_uuid": vm.instance_uuid, "error": message})
    failed = [r for r in results if "error" in r]
    publish_table(
        "backup-vms",
        [
            {
                "VM": r["vm"],
                "result": r.get("error") or "ok",
                "restore point": r.get("short_id"),
                "disks": ", ".join(f"{d['mode']}" for d in r.get("disks", [])),
                "consistency": r.get("consistency"),
                "CBT audit": (r.get("cbt_audit") or {}).get("status"),
                "snapshot released": r.get("snapshot_removed"),
            }
            for r in results
        ],
        f"{len(results) - len(failed)} of {len(results)} VMs backed up",
    )
    summary = {"vms": results, "failed": len(failed)}
    if failed:
        raise SomeBackupsFailed(
            len(failed), len(results), ", ".join(r["vm"] for r in failed), summary
        )
    return summary
