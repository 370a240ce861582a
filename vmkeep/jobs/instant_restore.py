"""Job: instant VM recovery — start, finalize or cancel a run (:mod:`vmkeep.browse.instant`) —
and instant disk recovery: disks of a point attached to an existing VM (``disk``;
:mod:`vmkeep.browse.instant_disks`), finalized or cancelled the same way.

``start`` leaves the export serving in a background process on the machine that ran the job (a
worker on the data mover), so ``finalize``/``cancel`` must run on that same machine: the run
record lives in its state directory.  No step is retried (none is idempotent: a second start
would make a second VM).  Publishes one table row per run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vmkeep.browse import instant, instant_disks, instant_runs
from vmkeep.jobs.restore_common import scan_before_restore
from vmkeep.jobs.specs import _WithTarget
from vmkeep.runtime.base import NO_RETRY, Runtime, step_def
from vmkeep.storage.repository import Repository
from vmkeep.tasks.vcenter import open_session
from vmkeep.vsphere import vmconfig
from vmkeep.vsphere.connection import Session


class InstantRestoreSpec(_WithTarget):
    """Start (``point``, ``host``), attach disks (``disk``: ``point``, ``vm``), finalize
    (``run``, ``datastore``) or cancel (``run``)."""

    action: Literal["start", "disk", "finalize", "cancel"] = "start"
    repo: str | None = Field(None, description="repository URL or path (start, disk)")
    point: str | None = Field(None, description="VM restore point (start; VM or image: disk)")
    vm: str | None = Field(None, description="existing VM the disks are attached to (disk)")
    disks: list[str] = Field(
        default_factory=list, description="disks of the point to attach, by index, device node "
        "(scsi0:1) or label (disk; default: all)"
    )
    host: str | None = Field(None, description="ESXi host to run the VM on (start)")
    name: str | None = Field(None, description="new VM name (start; default: the original)")
    folder: str | None = None
    resource_pool: str | None = Field(
        None, description="resource pool or vApp path in the host's cluster (start)"
    )
    networks: dict[str, str] | None = Field(
        None, description="source network → target network for the NICs (start)"
    )
    connect_networks: bool = Field(False, description="NICs connect at power-on (start)")
    nfs_address: str = Field("127.0.0.1", description="address the host reaches the mover at")
    listen: str | None = Field(None, description="address the NFS server binds")
    nfs_port: int = Field(instant.NFS_PORT, ge=0, lt=65536)
    nfs_clients: list[str] | None = Field(
        None, description="addresses allowed to mount the export (default: the host's vmknics)"
    )
    yara_rules: list[str] = Field(
        default_factory=list, description="secure restore (start): scan the point's files with "
        "these YARA rule files or folders first; a match refuses the restore"
    )
    run: str | None = Field(None, description="run id (finalize, cancel)")
    datastore: str | None = Field(None, description="production datastore (finalize)")

    @model_validator(mode="after")
    def _needs(self) -> InstantRestoreSpec:
        """What ``action`` needs is given, and nothing it would ignore (a ``datastore`` given
        to ``start``, a ``host`` to ``finalize``) is set: a mistaken deployment parameter fails
        here instead of being dropped without a word."""
        need, also = _ACTION_FIELDS[self.action]
        missing = [k for k in need if not getattr(self, k)]
        if missing:
            raise ValueError(f"{self.action} needs {', '.join(missing)}")
        ignored = [k for k, field in type(self).model_fields.items()
                   if k not in (*need, *also, *_COMMON_FIELDS)
                   and getattr(self, k) != field.get_default(call_default_factory=True)]
        if ignored:
            raise ValueError(f"{self.action} does not take {', '.join(ignored)}")
        return self


_EXPORT_OPTIONS = ("nfs_address", "listen", "nfs_port", "nfs_clients", "yara_rules")
#: per action: the fields it needs, and the other fields it reads (beside
#: :data:`_COMMON_FIELDS`)
_ACTION_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "start": (("repo", "point", "host"),
              (*_EXPORT_OPTIONS, "name", "folder", "resource_pool", "networks",
               "connect_networks")),
    "disk": (("repo", "point", "vm"), (*_EXPORT_OPTIONS, "disks")),
    "finalize": (("run", "datastore"), ()),
    "cancel": (("run",), ()),
}
_COMMON_FIELDS = ("action", "vcenter")


@step_def("instant-start", NO_RETRY)
def _start(session: Session, spec: InstantRestoreSpec) -> dict[str, Any]:
    return instant.start(
        session, str(spec.repo), str(spec.point), vcenter=spec.vcenter.url, host=str(spec.host),
        name=spec.name, folder=spec.folder,
        options=vmconfig.NewVmOptions(network_map=spec.networks, connect=spec.connect_networks,
                                      resource_pool=spec.resource_pool),
        nfs_host=spec.nfs_address,
        listen=spec.listen or spec.nfs_address, nfs_port=spec.nfs_port,
        nfs_clients=spec.nfs_clients,
    )


@step_def("instant-disk", NO_RETRY)
def _attach(session: Session, spec: InstantRestoreSpec) -> dict[str, Any]:
    return instant_disks.attach(
        session, str(spec.repo), str(spec.point), vcenter=spec.vcenter.url, vm=str(spec.vm),
        disks=spec.disks, nfs_host=spec.nfs_address, listen=spec.listen or spec.nfs_address,
        nfs_port=spec.nfs_port, nfs_clients=spec.nfs_clients,
    )


@step_def("instant-finalize", NO_RETRY)
def _finalize(session: Session, run: str, datastore: str) -> dict[str, Any]:
    record = instant_runs.load(run)
    if record.get("kind") == instant_disks.KIND:
        return instant_disks.finalize(session, record, datastore)
    return instant.finalize(session, record, datastore)


@step_def("instant-cancel", NO_RETRY)
def _cancel(session: Session, run: str) -> dict[str, Any]:
    record = instant_runs.load(run)
    if record.get("kind") == instant_disks.KIND:
        return instant_disks.cancel(session, record)
    return instant.cancel(session, record)


def instant_restore(spec: InstantRestoreSpec, rt: Runtime) -> dict[str, Any]:
    """Do ``spec.action``; returns the run record.  A start or disk attach checks the point
    first — a point of the wrong kind is refused before vCenter is contacted — and with
    ``yara_rules`` scans it (:func:`~vmkeep.jobs.restore_common.scan_before_restore`): a match
    refuses it, too."""
    if spec.action in ("start", "disk"):
        repository = Repository.open(str(spec.repo))
        point = repository.load_point(str(spec.point))
        if spec.action == "start":
            instant.vm_config(point)
        else:
            instant_disks.require_disks(point)
        if spec.yara_rules:
            scan_before_restore(rt, repository, point, spec.yara_rules)
    session = open_session(spec.vcenter)
    try:
        if spec.action == "start":
            record = rt.step(_start, session, spec)
        elif spec.action == "disk":
            record = rt.step(_attach, session, spec)
        elif spec.action == "finalize":
            record = rt.step(_finalize, session, str(spec.run), str(spec.datastore))
        else:
            record = rt.step(_cancel, session, str(spec.run))
    finally:
        session.close()
    rt.publish_table(
        f"instant-restore-{record['id']}",
        [{"run": record["id"], "state": record["state"], "VM": record["vm"],
          "host": record["host"], "datastore": record.get("finalized_to") or record["datastore"],
          "disks": len(record.get("disks") or []) or None,
          "powered on after s": record.get("powered_on_s")}],
        f"Instant restore {record['id']}: {record['state']}",
    )
    return record
