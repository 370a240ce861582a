"""``vmkeep doctor``: what stands between this data mover and backups of this vCenter.

:func:`diagnose` reads (never changes) the site and returns a :class:`Report` with five parts:

* ``privileges`` — the role of :mod:`vmkeep.vsphere.privileges` checked for this session on the
  root folder, every datastore and every VM (``HasPrivilegeOnEntities``); each privilege not
  granted is a problem, named with why vmkeep needs it and where it is missing;
* ``hosts`` — each ESXi host's connection state and its HTTPS endpoint (the rule of
  :func:`vmkeep.vsphere.hosts.endpoint_from_props`, the one backups use: address the first
  VMkernel NIC's IP, else the host name; port ``summary.config.port``, else 443; certificate
  ``config.certificate``), reached from this mover with TLS pinned to that certificate.  A host
  that publishes no certificate has no endpoint of its own here (reads go through vCenter):
  a warning, not a problem.  A disconnected or unreachable host is a problem;
* ``datastores`` — type (``summary.type``), accessibility, free space (``free_percent``), and
  the transport ``--transport auto`` will use for disks on it
  (:func:`vmkeep.vsphere.transport_choice.choose`: hot-add when this process runs in a mover VM
  whose host mounts it).  Free space below the skip threshold is a problem (VM backups whose
  snapshot grows there are skipped, :mod:`vmkeep.vsphere.datastore_space`), below the warning
  threshold a warning;
* ``vms`` — per VM: hardware version, CBT (on / off / unsupported), power state, the transports
  its disks will use, and what stops or limits its backup (inaccessible or orphaned VM, host not
  connected, a shared (multi-writer) disk that is not independent, only disks no snapshot holds
  (independent, physical-mode RDM), missing snapshot privileges; warnings for hardware < 7,
  independent disks and physical-mode RDMs (skipped), pending consolidation; virtual-mode RDMs
  noted, their transport nfc unless hot-added);
* ``problems`` / ``warnings`` — one line each, in that order.

A report is ``ok`` when it has no problem; the CLI exits 0 then, else 1.  Levels: ``problem``
(a backup fails or data is skipped silently), ``warning`` (works, slower or partial), ``info``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_space import DatastoreSpace
from vmkeep.vsphere.hosts import ENDPOINT_PROPS, HostEndpoint, endpoint_from_props
from vmkeep.vsphere.inventory import disks_from_devices, object_properties
from vmkeep.vsphere.privileges import ROLE, missing_privileges
from vmkeep.vsphere.transport_choice import choose

HOST_PATHS = [*ENDPOINT_PROPS, "runtime.connectionState", "runtime.inMaintenanceMode"]
DS_PATHS = ["name", "summary.type", "summary.accessible", "summary.capacity",
            "summary.freeSpace", "host"]
VM_PATHS = ["name", "config.template", "config.version", "config.changeTrackingEnabled",
            "capability.changeTrackingSupported", "runtime.powerState",
            "runtime.connectionState", "runtime.consolidationNeeded", "runtime.host",
            "config.hardware.device", "config.uuid"]
#: privileges without which a VM's backup fails outright
SNAPSHOT_PRIVILEGES = ("VirtualMachine.State.CreateSnapshot",
                       "VirtualMachine.State.RemoveSnapshot")
DMI_UUID = Path("/sys/class/dmi/id/product_uuid")


@dataclass
class Report:
    endpoint: str
    user: str
    server: str
    mover: str | None
    privileges: dict[str, Any] = field(default_factory=dict)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    datastores: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "endpoint": self.endpoint, "user": self.user, "server": self.server,
            "mover": self.mover, "privileges": self.privileges, "hosts": self.hosts,
            "datastores": self.datastores, "vms": self.vms, "problems": self.problems,
            "warnings": self.warnings,
        }


def _moid(ref: Any) -> str:
    return str(getattr(ref, "_moId", ref))


def probe_host(address: str, port: int, cert_pem: str, timeout: float) -> str | None:
    """None when ``address:port`` answers TLS with exactly ``cert_pem``, else why not."""
    try:
        ctx = HostEndpoint(address, "", address, port, cert_pem).ssl_context()
    except ValueError:
        return "its config.certificate is not a PEM certificate"
    try:
        with (
            socket.create_connection((address, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=address),
        ):
            return None
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
        return (f"TLS to {address}:{port} failed ({detail or type(exc).__name__}): "
                "not the certificate the host publishes")
    except OSError as exc:
        return f"{address}:{port} unreachable ({exc.strerror or type(exc).__name__})"


def _this_vm_uuid() -> str | None:
    try:
        return DMI_UUID.read_text().strip().lower() or None
    except OSError:
        return None


def diagnose(
    session: Session,
    *,
    mover: str | None = None,
    host_timeout: float = 5.0,
    probe: Callable[[str, int, str, float], str | None] = probe_host,
    free_percent: tuple[float, float] = (10.0, 5.0),
) -> Report:
    """Read the site and build the :class:`Report` (see the module doc); ``free_percent`` is
    the (warn, skip) pair of datastore free-space thresholds the backups apply."""
    from pyVmomi import vim

    about = session.content.about
    report = Report(endpoint=f"{session.host}:{session.port}", user=session.user,
                    server=f"{about.fullName} ({about.apiType})", mover=None)
    hosts = object_properties(session, vim.HostSystem, HOST_PATHS)
    datastores = object_properties(session, vim.Datastore, DS_PATHS)
    vms = object_properties(session, vim.VirtualMachine, VM_PATHS)
    host_names = {_moid(r): str(p.get("name", _moid(r))) for r, p in hosts}
    host_state = {_moid(r): str(p.get("runtime.connectionState", "")) for r, p in hosts}

    mover_host = _find_mover(report, vms, mover)
    _check_hosts(report, hosts, host_timeout, probe)
    ds_transport = _check_datastores(report, datastores, mover_host, free_percent)
    _check_privileges(report, session, [r for r, _ in datastores],
                      [r for r, p in vms if not p.get("config.template")])
    lacking = _vm_lacking(report)
    for ref, p in sorted(vms, key=lambda rp: str(rp[1].get("name", ""))):
        report.vms.append(_check_vm(ref, p, host_names, host_state, ds_transport, lacking))
    for vm in report.vms:
        for f in vm["findings"]:
            if f["level"] == "problem":
                report.problems.append(f"VM {vm['name']}: {f['reason']}")
            elif f["level"] == "warning":
                report.warnings.append(f"VM {vm['name']}: {f['reason']}")
    return report


def _find_mover(report: Report, vms: Sequence[tuple[Any, dict[str, Any]]],
                mover: str | None) -> str | None:
    """The host (moid) running the mover VM: named by ``mover``, else the VM whose BIOS UUID is
    this machine's (a data mover VM); None when this process does not run in a VM we see."""
    uuid = _this_vm_uuid()
    for _ref, p in vms:
        if (mover and p.get("name") == mover) or (
            not mover and uuid and str(p.get("config.uuid", "")).lower() == uuid
        ):
            report.mover = str(p.get("name"))
            host = p.get("runtime.host")
            return _moid(host) if host is not None else None
    if mover:
        report.problems.append(f"mover VM {mover!r} not found in the inventory")
    return None


def _check_hosts(report: Report, hosts: Sequence[tuple[Any, dict[str, Any]]],
                 timeout: float, probe: Callable[[str, int, str, float], str | None]) -> None:
    for ref, p in sorted(hosts, key=lambda rp: str(rp[1].get("name", ""))):
        name = str(p.get("name", _moid(ref)))
        state = str(p.get("runtime.connectionState", "unknown"))
        endpoint = endpoint_from_props(_moid(ref), p)  # the address rule of hosts.py
        address, port, cert = endpoint.address, endpoint.port, endpoint.cert_pem or ""
        row: dict[str, Any] = {"name": name, "moid": _moid(ref), "connection": state,
                               "address": address, "port": port, "level": "ok", "detail": ""}
        if state != "connected":
            row.update(level="problem", detail=f"host is {state}: its VMs cannot be backed up")
        elif not cert:
            row.update(level="warning", detail="publishes no certificate (config.certificate): "
                       "no endpoint of its own; disk reads go through vCenter (slower)")
        else:
            why = probe(address, port, cert, timeout)
            row.update(level="problem", detail=why) if why else row.update(
                detail="reachable, certificate matches")
        report.hosts.append(row)
        if row["level"] == "problem":
            report.problems.append(f"host {name}: {row['detail']}")
        elif row["level"] == "warning":
            report.warnings.append(f"host {name}: {row['detail']}")


def _check_datastores(report: Report, datastores: Sequence[tuple[Any, dict[str, Any]]],
                      mover_host: str | None,
                      free_percent: tuple[float, float]) -> dict[str, dict[str, Any]]:
    by_moid: dict[str, dict[str, Any]] = {}
    for ref, p in sorted(datastores, key=lambda rp: str(rp[1].get("name", ""))):
        mounts = {_moid(m.key) for m in p.get("host") or []}
        kind = str(p.get("summary.type", "unknown"))
        sees = bool(mover_host and mover_host in mounts)
        why_hotadd = f"the mover VM's host mounts this {kind} datastore" if sees else None
        choice = choose("auto", kind, hotadd=why_hotadd)
        row: dict[str, Any] = {"name": str(p.get("name")), "moid": _moid(ref), "type": kind,
               "accessible": bool(p.get("summary.accessible", True)), "hosts": len(mounts),
               "transport": choice.transport, "reason": choice.reason}
        space = DatastoreSpace(str(p.get("name")), int(p.get("summary.capacity") or 0),
                               int(p.get("summary.freeSpace") or 0))
        percent = space.free_percent
        row["free_percent"] = None if percent is None else round(percent, 1)
        report.datastores.append(row)
        by_moid[str(row["moid"])] = row
        by_moid[str(row["name"])] = row
        warn, skip = free_percent
        if not row["accessible"]:
            report.problems.append(f"datastore {row['name']}: not accessible")
        elif percent is not None and skip > 0 and percent < skip:
            report.problems.append(
                f"datastore {space.describe()}: VM backups whose snapshot grows there are "
                f"skipped (below {skip:g} %, VMKEEP_DATASTORE_SKIP_FREE_PERCENT)")
        elif percent is not None and warn > 0 and percent < warn:
            report.warnings.append(
                f"datastore {space.describe()}: below {warn:g} % "
                "(VMKEEP_DATASTORE_WARN_FREE_PERCENT); backups warn")
    return by_moid


def _check_privileges(report: Report, session: Session, datastores: list[Any],
                      vms: list[Any]) -> None:
    missing = missing_privileges(session, datastores=datastores, vms=vms)
    report.privileges = {
        "role": sorted(ROLE),
        "missing": [m.to_json() for m in missing],
    }
    for m in missing:
        where = f"{len(m.entities)} object(s), e.g. {m.entities[0]}" if m.entities else "?"
        report.problems.append(f"missing privilege {m.privilege} ({m.why}) on {where}")


def _vm_lacking(report: Report) -> dict[str, list[str]]:
    lacking: dict[str, list[str]] = {}
    for m in report.privileges.get("missing", []):
        for ent in m["entities"]:
            lacking.setdefault(ent.partition(":")[2], []).append(m["privilege"])
    return lacking


def _check_vm(ref: Any, p: dict[str, Any], host_names: dict[str, str],
              host_state: dict[str, str], ds_transport: dict[str, dict[str, Any]],
              lacking: dict[str, list[str]]) -> dict[str, Any]:
    from pyVmomi import vim

    moid = _moid(ref)
    findings: list[tuple[str, str]] = []
    supported = p.get("capability.changeTrackingSupported")
    cbt = "unsupported" if supported is False else (
        "on" if p.get("config.changeTrackingEnabled") else "off")
    host = p.get("runtime.host")
    conn = str(p.get("runtime.connectionState", "connected"))
    disks = [d for d in p.get("config.hardware.device") or []
             if isinstance(d, vim.vm.device.VirtualDisk)]
    transports: set[str] = set()
    if p.get("config.template"):
        findings.append(("info", "template (backed up only when asked)"))
    if conn != "connected":
        findings.append(("problem", f"VM is {conn}: cannot be backed up"))
    if host is not None and host_state.get(_moid(host), "connected") != "connected":
        findings.append(("problem", f"its host {host_names.get(_moid(host))} is "
                                    f"{host_state.get(_moid(host))}"))
    if not disks:
        findings.append(("info", "no virtual disks: nothing to back up"))
    independent: list[str] = []
    rdms: list[str] = []
    virtual_rdms: list[str] = []
    encrypted: list[str] = []
    for dev, disk in zip(disks, disks_from_devices(disks, {}), strict=True):
        if disk.physical_rdm:
            rdms.append(disk.label)  # in no snapshot, as an independent disk
            continue
        if disk.independent:
            independent.append(disk.label)
            continue
        if disk.encrypted:
            encrypted.append(disk.label)
        if disk.shared and not p.get("config.template"):
            findings.append(("problem", f"{disk.label} is shared (multi-writer) and not "
                                        "independent: vSphere cannot snapshot the VM"))
        if disk.virtual_rdm:
            virtual_rdms.append(disk.label)
        ds = getattr(dev.backing, "datastore", None)
        row = ds_transport.get(_moid(ds)) if ds is not None else None
        if row is None and disk.file_name.startswith("["):
            row = ds_transport.get(disk.datastore)
        if row is not None and disk.virtual_rdm:
            hot = row["reason"] if row["transport"] == "hotadd" else None
            transports.add(choose("auto", row.get("type"), hotadd=hot, virtual_rdm=True).transport)
        elif row is not None:
            transports.add(row["transport"])
    if disks and len(independent) + len(rdms) == len(disks):
        findings.append(("problem", "every disk is independent or a physical-mode RDM (not in "
                                    "snapshots): nothing can be backed up"))
    else:
        if independent:
            findings.append(("warning", f"independent disk(s) skipped: {', '.join(independent)}"))
        if rdms:
            findings.append(("warning", "physical-mode RDM(s) skipped (in no snapshot): "
                                        f"{', '.join(rdms)}"))
    if virtual_rdms:
        findings.append(("info", f"virtual-mode RDM(s) {', '.join(virtual_rdms)}: read through "
                                 "the host (nfc or hotadd), not from datastore files"))
    if encrypted:
        findings.append(("warning", f"encrypted disk(s) {', '.join(encrypted)}: only --transport "
                                    "hotadd from an encrypted mover VM reads them"))
    if cbt == "unsupported":
        findings.append(("warning", f"hardware {p.get('config.version')} < vmx-07: no CBT, "
                                    "every backup reads whole disks"))
    elif cbt == "off" and not p.get("config.template"):
        findings.append(("info", "CBT off (the first backup turns it on)"))
    if p.get("runtime.consolidationNeeded"):
        findings.append(("warning", "disks need consolidation (a snapshot removal failed)"))
    blocked = [x for x in lacking.get(moid, []) if x in SNAPSHOT_PRIVILEGES]
    if blocked:
        findings.append(("problem", f"cannot snapshot it: missing {', '.join(blocked)}"))
    level = "problem" if any(lv == "problem" for lv, _ in findings) else (
        "warning" if any(lv == "warning" for lv, _ in findings) else "ok")
    return {
        "name": str(p.get("name", moid)), "moid": moid,
        "hw_version": p.get("config.version"), "cbt": cbt,
        "power": str(p.get("runtime.powerState", "")),
        "host": host_names.get(_moid(host)) if host is not None else None,
        "template": bool(p.get("config.template")),
        "disks": len(disks), "transports": sorted(transports), "level": level,
        "findings": [{"level": lv, "reason": why} for lv, why in findings],
    }
