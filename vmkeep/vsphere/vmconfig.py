"""A VM's configuration as plain JSON, and recreating a VM from it (full VM restore).

:func:`capture_config` returns a JSON-safe dict (``format``/``version`` tagged, never reused):
name, identity, guestId, CPUs, memory, firmware, controllers, disks (capacity, controller,
unit, thin, mode), NICs (type, network name, MAC) and, when reachable, the ``.vmx`` text.
Version 2 adds secure boot, vTPM presence, ``extraConfig``, CPU/memory allocation
(:mod:`vmkeep.vsphere.vmsettings`) and the NVRAM file (``nvram``: file name, size, SHA-256 and
the zlib-compressed content in base64; EFI boot entries live there).  Version 1 configurations
restore as before.

:func:`build_spec` turns it into a ``ConfigSpec`` (used by ``CreateVM_Task`` here and by the NFC
import in :mod:`vmkeep.vsphere.nfc_import`); :func:`upload_nvram` puts the NVRAM file beside the
new VM's ``.vmx``.

:func:`create_vm` builds a ``ConfigSpec`` from it and runs ``CreateVM_Task`` (not retried on a
dropped connection: it may have run; a second call then fails with :class:`VMExists`).  It
never replaces an existing VM of the same name (:func:`refuse_taken_name`): a restore that
replaces one sets it aside first (:mod:`vmkeep.vsphere.replace`).  :func:`upload_disk` PUTs
disk content into a datastore file — into the flat extent when the path names a flat descriptor.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from vmkeep.disks.vmdk.descriptor import MAX_DESCRIPTOR, looks_like_descriptor, parse_descriptor
from vmkeep.errors import InputError
from vmkeep.vsphere import datastore_lookup, vm_lookup
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import (
    DatastoreNotMounted,
    NotFound,
    TransportRefused,
    VSphereError,
)
from vmkeep.vsphere.httpclient import HTTPClient, folder_url
from vmkeep.vsphere.inventory import datacenter_of, describe_vm, disks_from_devices
from vmkeep.vsphere.vmsettings import SETTINGS_PROPS, apply_settings, capture_settings
from vmkeep.vsphere.waiter import wait_for_task

FORMAT = "vmkeep.vmconfig"
VERSION = 2
MAX_NVRAM = 16 << 20
_CONTROLLERS = (
    "ParaVirtualSCSIController", "VirtualLsiLogicController", "VirtualLsiLogicSASController",
    "VirtualBusLogicController", "VirtualAHCIController", "VirtualNVMEController",
)
_NICS = ("VirtualVmxnet3", "VirtualE1000e", "VirtualE1000", "VirtualVmxnet2", "VirtualPCNet32")


def _short(obj: Any) -> str:
    return type(obj).__name__.rsplit(".", 1)[-1]


def capture_config(
    session: Session, vm: Any, *, include_vmx: bool = True, client: HTTPClient | None = None
) -> dict[str, Any]:
    """The VM's configuration as JSON-safe data (see module docstring); one collector call."""
    from pyVmomi import vim

    info = describe_vm(session, vm)
    p = session.props(vm, [
        "config.hardware.numCPU", "config.hardware.numCoresPerSocket", "config.hardware.memoryMB",
        "config.firmware", "config.hardware.device", "config.annotation", "config.version",
        "network", "layoutEx.file", *SETTINGS_PROPS,
    ])
    pg_names = {
        getattr(net, "_moId", ""): session.get(net, "name") for net in p.get("network") or []
    }
    devices = p.get("config.hardware.device") or []
    controllers, nics = [], []
    for dev in devices:
        kind = _short(dev)
        if kind in _CONTROLLERS or isinstance(dev, vim.vm.device.VirtualIDEController):
            controllers.append({"key": dev.key, "type": kind, "bus": dev.busNumber})
        elif kind in _NICS:
            backing = dev.backing
            network = getattr(backing, "deviceName", None)
            port = getattr(backing, "port", None)
            if network is None and port is not None:
                network = pg_names.get(port.portgroupKey)
            nics.append({
                "type": kind, "network": network,
                "portgroup_key": getattr(port, "portgroupKey", None),
                "mac": dev.macAddress, "address_type": dev.addressType,
            })
    config: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "name": info.name, "instance_uuid": info.instance_uuid, "bios_uuid": info.bios_uuid,
        "guest_id": info.guest_id, "hardware_version": p.get("config.version"),
        "num_cpu": p.get("config.hardware.numCPU"),
        "cores_per_socket": p.get("config.hardware.numCoresPerSocket"),
        "memory_mb": p.get("config.hardware.memoryMB"),
        "firmware": p.get("config.firmware"), "annotation": p.get("config.annotation") or "",
        "datacenter": info.datacenter, "folder": info.folder, "vapp": info.vapp,
        "host": info.host,
        "cluster": info.cluster, "vmx_path": info.vmx_path,
        "controllers": controllers, "nics": nics,
        "disks": [{
            "key": d.key, "capacity": d.capacity, "controller_key": d.controller_key,
            "unit_number": d.unit_number, "thin": d.thin, "eager_zeroed": d.eager_zeroed,
            "disk_mode": d.disk_mode,
            "file_name": d.file_name, "datastore": d.datastore,
            "physical_rdm": d.physical_rdm,
            "virtual_rdm": d.virtual_rdm,
        } for d in info.disks],
        "vmx": None,
        "nvram": None,
        **capture_settings(p),
    }
    if include_vmx and info.vmx_path and info.datacenter:
        config["vmx"] = _download_text(session, info.datacenter, info.vmx_path, client)
        config["nvram"] = _capture_nvram(session, info.datacenter, info.vmx_path,
                                         p.get("layoutEx.file") or [], client)
    return config


def _capture_nvram(
    session: Session, datacenter: str, vmx_path: str, files: list[Any], client: HTTPClient | None
) -> dict[str, Any] | None:
    """The VM's NVRAM file (from ``layoutEx``, else ESXi's default ``<vmx name>.nvram``)."""
    names = [f.name for f in files if getattr(f, "type", "") == "nvram"]
    name = names[0] if names else vmx_path[: -len(".vmx")] + ".nvram"
    ds, path = split_datastore_path(name)
    http = client or HTTPClient(session)
    try:
        _, _, data = http.request("GET", folder_url(datacenter, ds, path), what="download .nvram")
    except VSphereError:
        return None
    if len(data) > MAX_NVRAM:
        return None
    return {
        "file": posixpath.basename(path), "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "zlib_b64": base64.b64encode(zlib.compress(data, 6)).decode(),
    }


def nvram_bytes(config: Mapping[str, Any]) -> bytes | None:
    """The saved NVRAM content, checked against its SHA-256 (None when none was saved)."""
    saved = config.get("nvram")
    if not saved:
        return None
    data = zlib.decompress(base64.b64decode(saved["zlib_b64"]), bufsize=MAX_NVRAM)
    if len(data) != saved["size"] or hashlib.sha256(data).hexdigest() != saved["sha256"]:
        raise VSphereError("the saved NVRAM does not match its checksum")
    return data


def upload_nvram(session: Session, vm: Any, datacenter: str, data: bytes) -> str:
    """PUT ``data`` as ``<vmx name>.nvram`` beside the VM's ``.vmx`` (ESXi's default name, so no
    ``nvram`` key is needed); returns the datastore path written."""
    import io

    vmx = str(session.get(vm, "config.files.vmPathName"))
    target = vmx[: -len(".vmx")] + ".nvram" if vmx.endswith(".vmx") else vmx + ".nvram"
    ds, path = split_datastore_path(target)
    HTTPClient(session).put(folder_url(datacenter, ds, path), io.BytesIO(data), len(data))
    return target


def _download_text(
    session: Session, datacenter: str, file_name: str, client: HTTPClient | None
) -> str | None:
    ds, path = split_datastore_path(file_name)
    try:
        _, _, data = (client or HTTPClient(session)).request(
            "GET", folder_url(datacenter, ds, path), what="download .vmx"
        )
    except VSphereError:
        return None
    return data[:MAX_DESCRIPTOR * 16].decode("utf-8", errors="replace")


@dataclass
class CreatedVM:
    ref: Any = field(repr=False)
    name: str
    disks: list[dict[str, Any]]  # {"source_key", "key", "file_name", "capacity"}
    skipped_nics: list[str] = field(default_factory=list)


def _find(session: Session, vimtype: Any, name: str) -> Any:
    content = session.content
    view = session.call(
        content.viewManager.CreateContainerView, content.rootFolder, [vimtype], True,
        idempotent=True, what="find",
    )
    try:
        for obj in session.call(getattr, view, "view", idempotent=True) or []:
            if session.get(obj, "name") == name:
                return obj
    finally:
        session.call(view.DestroyView, idempotent=True)
    return None


def _folder(session: Session, host: Any, path: str | None) -> Any:
    from pyVmomi import vim

    node = datacenter_of(session, host)
    folder = session.get(node, "vmFolder")
    parts = [c for c in (path or "").strip("/").split("/") if c]
    if parts[:2] == [session.get(node, "name"), "vm"]:
        parts = parts[2:]
    for part in parts:
        children = session.get(folder, "childEntity") or []
        nxt = next((c for c in children if isinstance(c, vim.Folder)
                    and session.get(c, "name") == part), None)
        if nxt is None:
            raise NotFound(f"VM folder {path!r}")
        folder = nxt
    return folder


def _pool(session: Session, host: Any, path: str | None) -> Any:
    """The resource pool (or vApp) ``path`` — ``Test`` or ``Prod/DB`` — below the root pool of
    ``host``'s cluster (or standalone host); the root pool itself when ``path`` is empty."""
    pool = session.get(session.get(host, "parent"), "resourcePool")
    for part in [c for c in (path or "").strip("/").split("/") if c]:
        children = session.get(pool, "resourcePool") or []
        nxt = next((c for c in children if session.get(c, "name") == part), None)
        if nxt is None:
            names = sorted(str(session.get(c, "name")) for c in children)
            raise NotFound(f"resource pool {path!r} (at {part!r} there are: "
                           f"{', '.join(names) or 'none'})")
        pool = nxt
    return pool


def _host_networks(session: Session, host: Any) -> dict[str, Any]:
    """Network name → backing for the networks the target host sees and a VM may join (not a
    distributed switch's uplink port group)."""
    from pyVmomi import vim

    dev = vim.vm.device.VirtualEthernetCard
    found: dict[str, Any] = {}
    for net in session.get(host, "network") or []:
        name = session.get(net, "name")
        if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
            if session.get(net, "config.uplink"):
                continue
            switch = session.get(net, "config.distributedVirtualSwitch")
            port = vim.dvs.PortConnection(
                portgroupKey=session.get(net, "key"), switchUuid=session.get(switch, "uuid")
            )
            found[name] = dev.DistributedVirtualPortBackingInfo(port=port)
        else:
            found[name] = dev.NetworkBackingInfo(deviceName=name, network=net)
    return found


#: ``--disk-format`` values: as backed up, or PowerCLI's thin / thick (lazily zeroed) /
#: eagerzeroedthick
DISK_FORMATS = ("same", "thin", "thick", "eagerzeroedthick")


@dataclass(frozen=True)
class Provisioning:
    """How a restored disk is allocated: ``thin``, or thick and ``eager``-ly zeroed or not
    (an eager thin disk does not exist: ``thin`` wins)."""

    thin: bool
    eager: bool = False

    @property
    def label(self) -> str:
        """PowerCLI's name: ``thin``, ``thick`` or ``eagerzeroedthick``."""
        return "thin" if self.thin else "eagerzeroedthick" if self.eager else "thick"

    @property
    def eagerly_scrub(self) -> bool:
        """``FlatVer2BackingInfo.eagerlyScrub``."""
        return self.eager and not self.thin


@dataclass(frozen=True)
class NewVmOptions:
    """What a restore may change about the VM it recreates: ``keep_identity`` (BIOS/instance
    UUIDs and MACs, :func:`kept_address_type`), ``network_map`` (source network → target network,
    :func:`place`), ``connect`` (NICs connect at power-on; else they start disconnected),
    ``disk_format`` (one of :data:`DISK_FORMATS`) and ``resource_pool`` (a path below the host's
    cluster root pool, :func:`place`)."""

    keep_identity: bool = False
    network_map: Mapping[str, str] | None = None
    connect: bool = False
    disk_format: str = "same"
    resource_pool: str | None = None

    def provisioning(self, disk: Mapping[str, Any]) -> Provisioning:
        """How a restored disk is allocated (``disk`` as captured)."""
        if self.disk_format == "same":
            return Provisioning(bool(disk.get("thin")), bool(disk.get("eager_zeroed")))
        return Provisioning(self.disk_format == "thin", self.disk_format == "eagerzeroedthick")


def _device_specs(
    config: Mapping[str, Any],
    datastore: str,
    networks: Mapping[str, Any],
    skipped: list[str],
    options: NewVmOptions,
) -> list[Any]:
    from pyVmomi import vim

    dev = vim.vm.device
    add = dev.VirtualDeviceSpec.Operation.add
    specs, keymap = [], {}
    for i, c in enumerate(config.get("controllers", [])):
        if c["type"] == "VirtualIDEController":
            keymap[c["key"]] = 200 + int(c["bus"])  # IDE controllers exist by default
            continue
        ctl = getattr(dev, c["type"])(key=-100 - i, busNumber=c["bus"])
        if hasattr(ctl, "sharedBus"):
            ctl.sharedBus = vim.vm.device.VirtualSCSIController.Sharing.noSharing
        keymap[c["key"]] = ctl.key
        specs.append(dev.VirtualDeviceSpec(operation=add, device=ctl))
    for i, d in enumerate(config.get("disks", [])):
        mode = d.get("disk_mode") or "persistent"
        provisioning = options.provisioning(d)
        backing = dev.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode=mode, thinProvisioned=provisioning.thin,
            eagerlyScrub=provisioning.eagerly_scrub or None,
        )
        disk = dev.VirtualDisk(
            key=-200 - i, capacityInBytes=int(d["capacity"]), backing=backing,
            controllerKey=keymap.get(d["controller_key"], d["controller_key"]),
            unitNumber=d.get("unit_number"),
        )
        specs.append(dev.VirtualDeviceSpec(
            operation=add, fileOperation=dev.VirtualDeviceSpec.FileOperation.create, device=disk,
        ))
    for i, n in enumerate(config.get("nics", [])):
        net_backing = networks.get(n.get("network") or "")
        if net_backing is None:
            skipped.append(f"{n['type']} on {n.get('network')!r}: network not on target host")
            continue
        nic = getattr(dev, n["type"])(key=-300 - i)
        nic.backing = net_backing
        # a VM created off cannot be connected now; ``connect`` joins the network at power-on
        nic.connectable = dev.VirtualDevice.ConnectInfo(startConnected=options.connect,
                                                        connected=False)
        if options.keep_identity and n.get("mac"):
            nic.addressType, nic.macAddress = kept_address_type(n), n["mac"]
        else:
            nic.addressType = "generated"  # a restored copy must not clash with the original
        specs.append(dev.VirtualDeviceSpec(operation=add, device=nic))
    return specs


def kept_address_type(nic: Mapping[str, Any]) -> str:
    """The ``addressType`` under which a NIC asks for its old MAC again (``--keep-identity``).

    A static (``manual``) MAC stays static.  One vCenter assigned (``00:50:56:80``–``BF``) or ESX
    generated (``00:0c:29``) is asked for as ``assigned``/``generated``: vSphere grants it when no
    other VM has it (a disaster recovery: the original is gone) and gives a new one otherwise.  As
    static, an assigned MAC would keep the VM from powering on — ESX allows static VMware MACs only
    up to ``00:50:56:3F:FF:FF``.  Backups that recorded no type are judged by the MAC's range."""
    kind = str(nic.get("address_type") or "").lower()
    if kind in ("manual", "assigned", "generated"):
        return kind
    mac = str(nic.get("mac") or "").lower()
    if mac.startswith("00:50:56:") and re.fullmatch(r"[0-9a-f]{2}", mac[9:11]):
        return "manual" if int(mac[9:11], 16) <= 0x3F else "assigned"
    return "generated" if mac.startswith("00:0c:29:") else "manual"


def kept_mac_warnings(session: Session, ref: Any, config: Mapping[str, Any]) -> list[str]:
    """One warning per NIC whose old MAC vSphere did not give back (another VM has it)."""
    from pyVmomi import vim

    devices = session.get(ref, "config.hardware.device") or []
    got = {str(d.macAddress).lower() for d in devices
           if isinstance(d, vim.vm.device.VirtualEthernetCard)}
    return [f"the NIC on {n.get('network')!r} got a new MAC: {n['mac']} belongs to another VM"
            for n in config.get("nics", [])
            if n.get("mac") and str(n["mac"]).lower() not in got
            and kept_address_type(n) != "manual"]


@dataclass
class Placement:
    """Where a restored VM goes: resolved host, its resource pool (or vApp) and ``folder``: the
    VM folder — or the vApp — that will hold the VM and its name; ``notes``: what differs from
    what was asked or saved (a warning each)."""

    host: Any = field(repr=False)
    pool: Any = field(repr=False)
    folder: Any = field(repr=False)
    networks: dict[str, Any] = field(repr=False, default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_config(config: Mapping[str, Any]) -> None:
    if config.get("format") != FORMAT or int(config.get("version", 0)) > VERSION:
        raise VSphereError("not a vmkeep VM configuration (or a newer version)")


def place(
    session: Session, host: str, folder: str | None, network_map: Mapping[str, str] | None = None,
    pool: str | None = None,
) -> Placement:
    """Resolve ``host`` (by name), the resource ``pool`` (a path below its cluster's root pool;
    the root by default), the VM ``folder`` and the networks it sees.  A ``pool`` that is a
    vApp holds the VM itself (``folder`` is then the vApp; a ``folder`` given beside it is
    :class:`~vmkeep.errors.InputError`: a vApp's VMs are in no folder)."""
    from pyVmomi import vim

    host_ref = _find(session, vim.HostSystem, host)
    if host_ref is None:
        raise NotFound(f"host {host!r}")
    resource_pool = _pool(session, host_ref, pool)
    if isinstance(resource_pool, vim.VirtualApp) and folder is not None:
        raise InputError(f"--folder {folder} and --resource-pool {pool}: {pool} is a vApp, whose "
                         "VMs are in no folder; give one of them")
    host_nets = _host_networks(session, host_ref)
    for dst in (network_map or {}).values():
        if dst not in host_nets:
            raise NotFound(f"network {dst!r} on host {host!r} (it sees: "
                           f"{', '.join(sorted(host_nets)) or 'none'})")
    nets = {src: host_nets[dst] for src, dst in (network_map or {}).items()}
    holder = resource_pool if isinstance(resource_pool, vim.VirtualApp) else \
        _folder(session, host_ref, folder)
    return Placement(host_ref, resource_pool, holder, {**host_nets, **nets})


def start_create_vm(session: Session, where: Placement, spec: Any) -> Any:
    """Start creating the VM of ``spec`` at ``where``: ``CreateVM_Task`` on its folder, or
    ``CreateChildVM_Task`` on its vApp; returns the task (not retried: it may have run)."""
    from pyVmomi import vim

    if isinstance(where.folder, vim.VirtualApp):
        return session.call(where.folder.CreateChildVM_Task, spec, where.host,
                            what=f"CreateChildVM {spec.name}")
    return session.call(where.folder.CreateVM_Task, spec, where.pool, where.host,
                        what=f"CreateVM {spec.name}")


def check_network_map(config: Mapping[str, Any], network_map: Mapping[str, str] | None) -> None:
    """Every source network of ``network_map`` is one the saved VM's NICs used
    (:class:`~vmkeep.errors.InputError` otherwise: a mistyped name would leave its NIC on the
    old network, or skipped, without a word)."""
    used = {str(n.get("network")) for n in config.get("nics", []) if n.get("network")}
    for src in network_map or {}:
        if src not in used:
            raise InputError(f"no NIC of the backed-up VM was on network {src!r} (they were on: "
                             f"{', '.join(sorted(used)) or 'none'})")


def datastore_type(session: Session, name: str, near: Any) -> str:
    """``summary.type`` (VMFS, NFS, NFS41, vsan, VVOL…) of datastore ``name`` in the datacenter
    of ``near`` (a host or VM: :mod:`vmkeep.vsphere.datastore_lookup`)."""
    ref = datastore_lookup.resolve_datastore(session, name, near)
    return str(session.get(ref, "summary.type") or "")


def check_host_mounts(session: Session, host: Any, datastore: str, vm: str | None = None) -> None:
    """Refuse (:class:`DatastoreNotMounted`) datastore ``datastore`` (of ``host``'s datacenter)
    when ``host`` (a HostSystem) does not mount it, accessible: vSphere would fail the create,
    attach or storage vMotion only once it is under way.  :class:`NotFound` if the datacenter
    has no such datastore.  Changes nothing."""
    ref = datastore_lookup.resolve_datastore(session, datastore, host)
    for mount in session.get(ref, "host") or []:
        info = getattr(mount, "mountInfo", None)
        if mount.key == host and (info is None or info.accessible is not False):
            return
    mounted = []
    for other in session.get(host, "datastore") or []:
        name = session.get(other, "name")
        if name:
            mounted.append(str(name))
    raise DatastoreNotMounted(datastore, session.get(host, "name"),
                              f", which runs VM {vm}" if vm else "",
                              ", ".join(sorted(mounted)) or "none")


def check_transport(session: Session, transport: str, datastore: str, near: Any,
                    mounts: Mapping[str, str] | None = None) -> None:
    """Refuse a datastore that ``near``'s datacenter (``near``: the host or VM written for) does
    not have (:class:`NotFound`) or a transport it cannot take: ``https`` writes flat files
    (VMFS and NFS only); ``direct`` needs an NFS datastore mounted writable on this machine;
    ``nfc`` takes any."""
    import os

    kind = datastore_type(session, datastore, near).upper()
    if transport == "nfc":
        return
    if transport == "https" and kind not in ("VMFS", "NFS", "NFS41"):
        raise TransportRefused(f"--transport https writes flat files: not on a {kind} datastore"
                               " (use nfc)")
    if transport == "direct":
        root = (mounts or {}).get(datastore)
        if kind not in ("NFS", "NFS41"):
            raise TransportRefused(f"--transport direct needs an NFS datastore; {datastore} is"
                                   f" {kind} (use nfc)")
        if not root or not os.access(root, os.W_OK):
            raise TransportRefused(f"--transport direct: datastore {datastore} is not mounted"
                                   " writable here (--datastore-mount NAME=PATH)")


def rdms_for_restore(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` as a new VM gets it, and a warning per raw device mapping (a SAN LUN passed
    to the guest).  A physical-mode RDM (in no snapshot, so in no restore point) is left out: a
    new VM gets no disk in its place — an empty VMDK of the LUN's size is not what the guest
    had, and a LUN is not vmkeep's to create — and the administrator maps the LUN again where
    it is needed.  A virtual-mode RDM was backed up like a VMDK and becomes one, holding the
    LUN's contents, with a warning saying so (a LUN is not vmkeep's to create either)."""
    disks = list(config.get("disks") or [])
    notes = [f"disk {d.get('key')} was a physical-mode RDM (a SAN LUN, in no snapshot, not "
             "backed up): left out of the new VM; map the LUN to it again if it needs it"
             for d in disks if d.get("physical_rdm")]
    notes += [f"disk {d.get('key')} was a virtual-mode RDM (a SAN LUN): restored as a VMDK "
              "holding the LUN's contents; map a LUN to the VM instead if it needs one"
              for d in disks if d.get("virtual_rdm")]
    return {**config, "disks": [d for d in disks if not d.get("physical_rdm")]}, notes


def build_spec(
    config: Mapping[str, Any],
    name: str,
    datastore: str,
    networks: Mapping[str, Any],
    *,
    options: NewVmOptions | None = None,
    marker: Mapping[str, str] | None = None,
) -> tuple[Any, list[str], list[str]]:
    """The ``ConfigSpec`` recreating ``config`` as ``name`` on ``datastore``; returns
    ``(spec, skipped NICs, warnings)``.  NICs join ``networks[their network]`` (see
    :func:`place`); ``options`` as :class:`NewVmOptions` says."""
    from pyVmomi import vim

    check_config(config)
    options = options or NewVmOptions()
    skipped: list[str] = []
    spec = vim.vm.ConfigSpec(
        name=name, guestId=config.get("guest_id") or "otherGuest64",
        numCPUs=config.get("num_cpu") or 1, memoryMB=config.get("memory_mb") or 1024,
        numCoresPerSocket=config.get("cores_per_socket") or None,
        annotation=config.get("annotation") or None,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=_device_specs(config, datastore, networks, skipped, options),
    )
    warnings = apply_settings(spec, config, keep_identity=options.keep_identity,
                              marker=marker or {})
    return spec, skipped, warnings


@dataclass
class NewVm:
    """A VM about to be created (:func:`plan_new_vm`): where, its ``ConfigSpec``, and the
    warnings so far (NICs left out, settings not carried over)."""

    where: Placement
    spec: Any
    warnings: list[str]


def placement(
    session: Session,
    config: Mapping[str, Any],
    host: str,
    folder: str | None,
    options: NewVmOptions,
) -> Placement:
    """Where a restored VM of ``config`` goes, everything about it checked first — the
    configuration's version, the network mapping against the VM's NICs and the host's networks,
    host, folder and resource pool found.  Without ``folder``, the VM's own folder as saved
    (:func:`saved_folder`).  Changes nothing: callers run it before they touch anything (a
    restore with ``--overwrite`` before it sets the old VM aside)."""
    from pyVmomi import vim

    check_config(config)
    check_network_map(config, options.network_map)
    where = place(session, host, folder, options.network_map, options.resource_pool)
    if folder is None and not isinstance(where.pool, vim.VirtualApp):
        where.folder, where.notes = saved_folder(session, where.host, config)
        if config.get("vapp") and options.resource_pool is None:
            _into_saved_vapp(session, where, config)
    return where


def saved_folder(session: Session, host: Any, config: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The folder the VM of ``config`` was in (``/DC/vm/Prod/web``: ``Prod/web`` below the VM
    folder of ``host``'s datacenter, which may be another one), as a restore to the original
    location puts it back — folder permissions and folder-based backup selections then apply
    to it again.  The root VM folder, with a note, when that folder does not exist there; without
    a note for a configuration that names none (saved before vmkeep recorded it)."""
    saved = str(config.get("folder") or "")
    parts = [c for c in saved.strip("/").split("/") if c]
    if len(parts) < 2 or parts[1] != "vm":
        return _folder(session, host, None), []
    try:
        return _folder(session, host, "/".join(parts[2:]) or None), []
    except NotFound:
        return _folder(session, host, None), [
            f"the VM's folder {saved} does not exist in the target datacenter: restored into "
            "its root VM folder (--folder chooses another)"]


def _into_saved_vapp(session: Session, where: Placement, config: Mapping[str, Any]) -> None:
    """Put ``where`` into the vApp the VM was in (``config["vapp"]``, a path below the folder
    ``where`` holds), when that folder has it and it is in the target host's cluster (its
    resources are that cluster's); else leave ``where`` in the folder, with a note why."""
    from pyVmomi import vim

    vapp = str(config["vapp"])
    node: Any = where.folder
    for i, part in enumerate(c for c in vapp.split("/") if c):
        children = session.get(node, "childEntity" if i == 0 else "resourcePool") or []
        node = next((c for c in children if isinstance(c, vim.VirtualApp)
                     and session.get(c, "name") == part), None)
        if node is None:
            break
    folder = vm_lookup.folder_path(session, where.folder)
    cluster = session.get(where.host, "parent")
    if node is not None and getattr(session.get(node, "owner"), "_moId", None) == cluster._moId:
        where.pool = where.folder = node
        return
    why = (f"is not in {folder} in the target datacenter" if node is None else
           f"is in another cluster than host {session.get(where.host, 'name')}")
    where.notes.append(f"the VM was in vApp {vapp}, which {why}: restored outside it, into "
                       f"{folder} (--resource-pool names a vApp to restore into)")


def plan_new_vm(
    session: Session,
    config: Mapping[str, Any],
    name: str,
    where: Placement,
    datastore: str,
    options: NewVmOptions,
    marker: Mapping[str, str] | None = None,
) -> NewVm:
    """The VM about to be created at ``where`` (from :func:`placement`): the name checked not
    taken in its folder (:func:`vmkeep.vsphere.vm_lookup.check_name_free`), and its
    ``ConfigSpec``.  Changes nothing."""
    named_elsewhere = vm_lookup.check_name_free(session, name, where.folder)
    spec, skipped, warnings = build_spec(config, name, datastore, where.networks,
                                         options=options, marker=marker)
    return NewVm(where, spec, named_elsewhere + skipped + warnings)


def created_warnings(session: Session, ref: Any, config: Mapping[str, Any],
                     options: NewVmOptions) -> list[str]:
    """What the created VM did not get as asked: kept MACs vSphere gave to another VM."""
    return kept_mac_warnings(session, ref, config) if options.keep_identity else []


def disk_pairs(session: Session, ref: Any, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per source disk (in order), the new VM's disk: source key, key, file name, capacity,
    controller (``(type, bus)``) and unit number."""
    devices = session.get(ref, "config.hardware.device") or []
    controllers = {
        d.key: (_short(d), getattr(d, "busNumber", 0)) for d in devices
        if hasattr(d, "busNumber")
    }
    new_disks = disks_from_devices(devices, {})
    return [
        {"source_key": src["key"], "key": new.key, "file_name": new.file_name,
         "capacity": new.capacity, "controller": controllers.get(new.controller_key),
         "unit_number": new.unit_number}
        for src, new in zip(config.get("disks", []), new_disks, strict=False)
    ]


def create_vm(
    session: Session,
    config: Mapping[str, Any],
    name: str,
    where: Placement,
    datastore: str,
    *,
    options: NewVmOptions | None = None,
    marker: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
) -> CreatedVM:
    """Recreate a VM from :func:`capture_config` data at ``where`` (:func:`placement`, made with
    the same ``options``) on ``datastore`` (see module doc) with ``CreateVM_Task`` (empty disks;
    the ``https``/``direct`` transports fill them).

    Returns the new VM and, per source disk key, the new disk's datastore path.  NICs are
    attached to the same-named network (or the one ``options.network_map`` names) if the host
    sees it, else skipped and listed in ``skipped_nics``; MACs are regenerated unless
    ``options.keep_identity`` (a MAC vSphere did not give back is a warning); NICs start
    disconnected unless ``options.connect``; disks as ``options.disk_format`` says.
    """
    options = options or NewVmOptions()
    new = plan_new_vm(session, config, name, where, datastore, options, marker)
    task = start_create_vm(session, where, new.spec)
    with vm_lookup.taken_as_vm_exists(name):
        ref = wait_for_task(session, task, timeout=timeout, what=f"CreateVM {name}")
    warnings = new.warnings + created_warnings(session, ref, config, options)
    return CreatedVM(ref, name, disk_pairs(session, ref, config), warnings)


def upload_disk(
    session: Session,
    datastore_path: str,
    fileobj: IO[bytes],
    size: int,
    *,
    datacenter: str,
    client: HTTPClient | None = None,
) -> str:
    """PUT ``size`` bytes into ``datastore_path`` (its flat extent if it is a flat descriptor).

    Returns the datastore path actually written.  Overwrites: callers only pass disks of a VM
    they just created.
    """
    http = client or HTTPClient(session)
    ds, path = split_datastore_path(datastore_path)
    url = folder_url(datacenter, ds, path)
    try:
        head_size = http.head_size(url)
        head = http.get_range(url, 0, min(head_size, MAX_DESCRIPTOR)) if head_size else b""
    except NotFound:
        head = b""
    if head and looks_like_descriptor(head):
        desc = parse_descriptor(head.rstrip(b"\x00"), datastore_path)
        if not desc.is_flat or len(desc.extents) != 1 or desc.extents[0].file is None:
            raise VSphereError(f"{datastore_path}: only single flat extents can be uploaded")
        if size != desc.capacity:
            raise VSphereError(f"{datastore_path}: {size} bytes for a {desc.capacity}-byte disk")
        path = posixpath.join(posixpath.dirname(path), desc.extents[0].file)
        url = folder_url(datacenter, ds, path)
    http.put(url, fileobj, size)
    return f"[{ds}] {path}"
