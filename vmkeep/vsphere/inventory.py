"""The VM inventory from one paged property-collector query, and VM selection.

:func:`list_vms` creates a container view and asks ``RetrievePropertiesEx`` for the VMs' backup
relevant properties *and* the name/parent of every host, cluster, folder, datacenter and
datastore, then resolves host → cluster and folder paths locally.  No call per object.  The
answer comes in pages of at most :data:`PAGE_SIZE` objects (``ContinueRetrievePropertiesEx``
with the token until none is left; the server may send fewer per page than asked), so each
round trip stays small and quick whatever the size of the inventory; a failure part-way cancels
the remaining pages (``CancelRetrievePropertiesEx``).

VM selection by vSphere tag is not done here: tags live in the vAPI tagging service
(:mod:`vmkeep.vsphere.tagging`, which returns the tagged VMs' morefs; :func:`select_vms` takes
them as ``tagged``).  ``VirtualMachine.tag`` holds no vSphere tags and is not read.

A VM is identified by its ``instance_uuid`` (``config.instanceUuid``), which survives renames,
vMotion and storage vMotion; :func:`find_vm` finds it again after a re-login.  Read-only module:
every call is idempotent and retried on drops by the session.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import NotFound
from vmkeep.vsphere.names import vm_name

VM_PATHS = [
    "name", "parent", "parentVApp", "config.instanceUuid", "config.uuid", "config.template",
    "config.guestId",
    "config.hardware.device", "config.changeTrackingEnabled", "config.files.vmPathName",
    "config.files.snapshotDirectory",
    "runtime.host", "runtime.powerState", "runtime.consolidationNeeded", "datastore",
]
ENTITY_PATHS = ["name", "parent"]
#: a vApp's place in the VMs-and-templates hierarchy (its ``parent`` is a resource pool)
VAPP_PATHS = [*ENTITY_PATHS, "parentFolder", "parentVApp"]
#: objects asked for per page (vCenter may answer fewer)
PAGE_SIZE = 500


@dataclass(frozen=True)
class VirtualDisk:
    """One virtual disk of a VM as vSphere describes it (device key, backing file, mode, CBT
    change id).  Not to be confused with :class:`vmkeep.storage.manifest.DiskInfo`, a disk as a
    restore point records it."""

    key: int
    label: str
    capacity: int
    file_name: str  # "[datastore] dir/name.vmdk"
    datastore: str
    thin: bool
    disk_mode: str  # persistent, independent_persistent, independent_nonpersistent, ...
    change_id: str | None
    controller_key: int
    unit_number: int | None
    uuid: str | None = None
    eager_zeroed: bool = False  # thick, zeroed when created (FT, clustered disks need it)
    #: the virtual device node as the vSphere Client shows it: ``scsi0:1``, ``sata0:0``,
    #: ``nvme0:0``, ``ide0:1`` (controller bus and unit number); None when unknown
    node: str | None = None
    #: shared by several VMs (``backing.sharing`` ``sharingMultiWriter``: Oracle RAC, WSFC);
    #: vSphere snapshots no such disk, and no VM with one that is not independent
    shared: bool = False
    #: a raw device mapping's ``compatibilityMode`` (a SAN LUN passed to the guest):
    #: ``physicalMode`` or ``virtualMode``; None for a VMDK (:attr:`physical_rdm`,
    #: :attr:`virtual_rdm`)
    rdm: str | None = None
    #: encrypted by vSphere VM Encryption (``backing.keyId``): its datastore files are
    #: ciphertext; only a VM the host decrypts for (the VM itself, or an encrypted mover it is
    #: hot-added to) reads it in the clear
    encrypted: bool = False

    @property
    def independent(self) -> bool:
        """Independent disks are not part of snapshots: they cannot be backed up from one."""
        return self.disk_mode.startswith("independent")

    @property
    def physical_rdm(self) -> bool:
        """A physical-mode raw device mapping: in no snapshot, whatever its ``diskMode`` says."""
        return self.rdm == "physicalMode"

    @property
    def virtual_rdm(self) -> bool:
        """A virtual-mode raw device mapping: snapshotted and change-tracked like a VMDK, but
        its base is a LUN behind a mapping file, no flat file on the datastore — read through
        the host (NFC export) or hot-add, never from the datastore's files."""
        return self.rdm == "virtualMode"

    @property
    def in_snapshots(self) -> bool:
        """Whether a snapshot of the VM holds this disk (what a backup can read): not an
        independent disk, not a physical-mode RDM."""
        return not self.independent and not self.physical_rdm

    @property
    def not_in_snapshots(self) -> str:
        """Why a snapshot does not hold this disk, for a warning (``""`` when it does)."""
        if self.physical_rdm:
            return "is a physical-mode RDM"
        return "is independent" if self.independent else ""

    @property
    def datastore_path(self) -> str:
        """Path inside the datastore (``dir/name.vmdk``)."""
        return split_datastore_path(self.file_name)[1]



@dataclass(frozen=True)
class VMInfo:
    """A VM's identity, placement and disks; ``ref`` is the live ``vim.VirtualMachine``."""

    ref: Any = field(compare=False, repr=False)
    moid: str
    name: str
    instance_uuid: str
    bios_uuid: str | None
    datacenter: str | None  # inventory path of the datacenter: "Region/DC1" (folders above it)
    folder: str  # "/DC0/vm/sub"
    host: str | None
    cluster: str | None
    datastores: tuple[str, ...]
    power_state: str
    template: bool
    guest_id: str | None
    cbt_enabled: bool
    consolidation_needed: bool
    vmx_path: str | None
    disks: tuple[VirtualDisk, ...]
    #: where the VM's snapshot state (.vmsn) goes: ``[ds] dir`` (the VM's folder unless moved)
    snapshot_dir: str | None = None
    #: the vApp the VM is in (``app1``; nested: ``outer/inner``), whose VM folder ``folder``
    #: is; None outside vApps
    vapp: str | None = None


#: the properties that say where a VM sits in the VMs-and-templates hierarchy
#: (:func:`parent_from`)
VM_PARENT_PATHS = ["parent", "parentVApp"]


def parent_from(props: Mapping[str, Any], obj: Any) -> Any:
    """``obj``'s parent in the VMs-and-templates hierarchy, from its properties as read, or
    None at the top.  vSphere leaves ``parent`` unset for a VM in a vApp and sets
    ``parentVApp``; a vApp's ``parent`` is a resource pool, its folder ``parentFolder`` (a root
    vApp) or ``parentVApp`` (a nested one).  The one rule for "the folder (or vApp) holding
    it": the inventory, name checks and the sweep all go through it."""
    from pyVmomi import vim

    if isinstance(obj, vim.VirtualApp):
        return props.get("parentFolder") or props.get("parentVApp") or props.get("parent")
    return props.get("parent") or props.get("parentVApp")


def inventory_parent(session: Session, obj: Any) -> Any:
    """:func:`parent_from`, read from vSphere (one property read)."""
    from pyVmomi import vim

    if isinstance(obj, vim.VirtualMachine):
        return parent_from(session.props(obj, VM_PARENT_PATHS), obj)
    if isinstance(obj, vim.VirtualApp):
        return parent_from(session.props(obj, VAPP_PATHS), obj)
    return session.get(obj, "parent")


def datacenter_of(session: Session, near: Any) -> Any:
    """The datacenter ``near`` (a host, VM, vApp, folder, datastore…) is in (``near`` itself if
    it is one); :class:`NotFound` when there is none above it (it was removed meanwhile)."""
    from pyVmomi import vim

    node = near
    while node is not None and not isinstance(node, vim.Datacenter):
        node = inventory_parent(session, node)
    if node is None:
        raise NotFound("the datacenter of the target host or VM")
    return node


def datacenter_path(session: Session, near: Any) -> str:
    """The inventory path of ``near``'s datacenter, folders above it included (``Region/DC1``,
    as :attr:`VMInfo.datacenter` says it)."""
    from pyVmomi import vim

    node = datacenter_of(session, near)
    names: list[str] = []
    while node is not None and not (isinstance(node, vim.Folder)
                                    and session.get(node, "parent") is None):
        names.append(str(session.get(node, "name")))
        node = session.get(node, "parent")
    return "/".join(reversed(names))


def _retrieve(session: Session, vm_refs: Sequence[Any] | None) -> list[Any]:
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    content = session.content
    entity_types = [vim.Folder, vim.Datacenter, vim.ComputeResource, vim.HostSystem, vim.Datastore]
    view_types = [*entity_types, vim.VirtualApp]
    if vm_refs is None:
        view_types.append(vim.VirtualMachine)
    view = session.call(
        content.viewManager.CreateContainerView, content.rootFolder, view_types, True,
        idempotent=True, what="create container view",
    )
    try:
        through_view = pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")
        object_set = [pc.ObjectSpec(obj=view, skip=True, selectSet=[through_view])]
        object_set += [pc.ObjectSpec(obj=ref) for ref in vm_refs or []]
        spec = pc.FilterSpec(
            objectSet=object_set,
            propSet=[
                pc.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PATHS),
                *(pc.PropertySpec(type=t, pathSet=ENTITY_PATHS) for t in entity_types),
                pc.PropertySpec(type=vim.VirtualApp, pathSet=VAPP_PATHS),
            ],
        )
        return retrieve_paged(session, spec, what="inventory")
    finally:
        session.call(view.DestroyView, idempotent=True, what="destroy view")


def retrieve_paged(
    session: Session, spec: Any, *, page_size: int = PAGE_SIZE, what: str = "properties"
) -> list[Any]:
    """Every ``ObjectContent`` matching ``spec``, fetched page by page (see the module doc)."""
    from pyVmomi import vmodl

    collector = session.content.propertyCollector
    options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=page_size)
    result = session.call(
        collector.RetrievePropertiesEx, [spec], options, idempotent=True, what=what
    )
    objects: list[Any] = []
    token = None
    try:
        while result is not None:
            objects.extend(result.objects or [])
            token = result.token
            if not token:
                break
            result = session.call(
                collector.ContinueRetrievePropertiesEx, token, idempotent=False, what=what
            )
        token = None
    finally:
        if token:
            with contextlib.suppress(Exception):  # the server drops it on its own too
                collector.CancelRetrievePropertiesEx(token)
    return objects


def disks_from_devices(devices: Iterable[Any], ds_names: dict[str, str]) -> tuple[VirtualDisk, ...]:
    from pyVmomi import vim

    rdm_backing = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo
    devices = list(devices or [])
    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks = []
    for dev in devices:
        if not isinstance(dev, vim.vm.device.VirtualDisk):
            continue
        backing = dev.backing
        ds_ref = getattr(backing, "datastore", None)
        file_name = getattr(backing, "fileName", "") or ""
        ds = ds_names.get(ds_ref._moId, "") if ds_ref is not None else ""
        if not ds and file_name.startswith("["):
            ds = split_datastore_path(file_name)[0]
        capacity = dev.capacityInBytes or (dev.capacityInKB or 0) * 1024
        disks.append(VirtualDisk(
            key=dev.key,
            label=getattr(dev.deviceInfo, "label", "") or f"disk {dev.key}",
            capacity=int(capacity),
            file_name=file_name,
            datastore=ds,
            thin=bool(getattr(backing, "thinProvisioned", False)),
            eager_zeroed=bool(getattr(backing, "eagerlyScrub", False)),
            disk_mode=getattr(backing, "diskMode", None) or "persistent",
            change_id=getattr(backing, "changeId", None) or None,
            controller_key=int(dev.controllerKey or 0),
            unit_number=dev.unitNumber,
            uuid=getattr(backing, "uuid", None),
            node=device_node(controllers.get(dev.controllerKey or 0), dev.unitNumber),
            shared=getattr(backing, "sharing", None) == "sharingMultiWriter",
            rdm=getattr(backing, "compatibilityMode", None) or None
            if isinstance(backing, rdm_backing) else None,
            encrypted=getattr(backing, "keyId", None) is not None,
        ))
    return tuple(disks)


def device_node(controller: Any, unit_number: int | None) -> str | None:
    """``scsi0:1``: a disk's virtual device node (the controller's kind and bus number, the
    disk's unit number), or None for a controller that is not a disk bus."""
    from pyVmomi import vim

    kinds = (
        (vim.vm.device.VirtualSCSIController, "scsi"),
        (vim.vm.device.VirtualSATAController, "sata"),
        (vim.vm.device.VirtualNVMEController, "nvme"),
        (vim.vm.device.VirtualIDEController, "ide"),
    )
    kind = next((k for cls, k in kinds if isinstance(controller, cls)), None)
    if kind is None or unit_number is None:
        return None
    return f"{kind}{getattr(controller, 'busNumber', 0) or 0}:{unit_number}"


def _build(objects: list[Any]) -> list[VMInfo]:
    from pyVmomi import vim

    props: dict[str, dict[str, Any]] = {}
    kinds: dict[str, Any] = {}
    for obj in objects:
        moid = obj.obj._moId
        props[moid] = {p.name: p.val for p in obj.propSet}
        kinds[moid] = obj.obj
    names = {moid: p.get("name", moid) for moid, p in props.items()}

    def ancestors(moid: str) -> list[str]:
        chain, seen = [], set()
        while moid in props and moid not in seen:
            seen.add(moid)
            chain.append(moid)
            parent = parent_from(props[moid], kinds[moid])
            if parent is None:
                break
            moid = parent._moId
        return chain

    vms = []
    ds_names = {m: names[m] for m, k in kinds.items() if isinstance(k, vim.Datastore)}
    for moid, p in props.items():
        if not isinstance(kinds[moid], vim.VirtualMachine) or not p.get("config.instanceUuid"):
            continue
        chain = ancestors(moid)[1:]  # its vApps, then folders up to the root folder
        apps = [m for m in chain if isinstance(kinds.get(m), vim.VirtualApp)]
        chain = chain[len(apps):]
        dc = next((m for m in chain if isinstance(kinds.get(m), vim.Datacenter)), None)
        below_dc = chain[: chain.index(dc) + 1] if dc else chain[:-1]
        folder = "/" + "/".join(names[m] for m in reversed(below_dc))
        host_ref = p.get("runtime.host")
        host = names.get(host_ref._moId) if host_ref is not None else None
        cluster = None
        if host_ref is not None and host_ref._moId in props:
            parent = props[host_ref._moId].get("parent")
            if isinstance(parent, vim.ClusterComputeResource):
                cluster = names.get(parent._moId)
        vms.append(VMInfo(
            ref=kinds[moid], moid=moid, name=vm_name(str(p.get("name", moid))),
            instance_uuid=p["config.instanceUuid"], bios_uuid=p.get("config.uuid"),
            # the datacenter's inventory path ("Region/DC1"): what /folder's dcPath needs
            datacenter="/".join(names[m] for m in reversed(chain[chain.index(dc) :]))
            if dc else None,
            folder=folder, host=host, cluster=cluster,
            datastores=tuple(sorted(ds_names.get(d._moId, "") for d in p.get("datastore", ()))),
            power_state=str(p.get("runtime.powerState", "unknown")),
            template=bool(p.get("config.template")), guest_id=p.get("config.guestId"),
            cbt_enabled=bool(p.get("config.changeTrackingEnabled")),
            consolidation_needed=bool(p.get("runtime.consolidationNeeded")),
            vmx_path=p.get("config.files.vmPathName"),
            snapshot_dir=p.get("config.files.snapshotDirectory"),
            disks=disks_from_devices(p.get("config.hardware.device", []), ds_names),
            vapp="/".join(names[m] for m in reversed(apps)) or None,
        ))
    return sorted(vms, key=lambda v: (v.name, v.instance_uuid))


def list_vms(session: Session) -> list[VMInfo]:
    """Every VM (templates included) with its disks, from one paged property query."""
    return _build(_retrieve(session, None))


def describe_vm(session: Session, vm_ref: Any) -> VMInfo:
    """Fresh :class:`VMInfo` for one VM reference (one round trip)."""
    found = _build(_retrieve(session, [vm_ref]))
    if not found:
        raise NotFound(f"VM {getattr(vm_ref, '_moId', vm_ref)}")
    return found[0]


def find_vm(session: Session, instance_uuid: str) -> VMInfo:
    """Find a VM by ``config.instanceUuid`` (after rename, vMotion or re-login)."""
    index = session.content.searchIndex
    ref = session.call(
        index.FindByUuid, None, instance_uuid, True, True, idempotent=True, what="FindByUuid"
    )
    if ref is None:
        raise NotFound(f"VM with instance UUID {instance_uuid}")
    return describe_vm(session, ref)


def _in_folder(vm: VMInfo, folder: str) -> bool:
    """Whether ``folder`` is a prefix of the VM's place as the vSphere Client's VMs-and-templates
    view shows it: its folder, then its vApp (``/DC/vm/prod/app1``)."""
    want = [c for c in folder.strip("/").split("/") if c]
    have = [c for c in f"{vm.folder}/{vm.vapp or ''}".strip("/").split("/") if c]
    return have[: len(want)] == want or have[2 : 2 + len(want)] == want  # "/DC/vm/<folder>"


def select_vms(
    vms: Iterable[VMInfo],
    *,
    names: Sequence[str] = (),
    patterns: Sequence[str] = (),
    folder: str | None = None,
    host: str | None = None,
    cluster: str | None = None,
    tagged: Collection[str] | None = None,
    include_templates: bool = False,
) -> list[VMInfo]:
    """Pure selection: a VM matches one of ``names`` (its name or instanceUuid) or
    ``patterns`` (glob on its name) when any are given,
    and every given ``folder`` (path prefix, with or without ``/DC/vm``), ``host``, ``cluster``
    and ``tagged`` (the morefs a tag is attached to, from :mod:`vmkeep.vsphere.tagging`).
    Templates only when named exactly (in ``names``: a template is backed up when asked for,
    never because a pattern, folder or tag takes it in) or with ``include_templates``."""
    chosen = []
    for vm in vms:
        named = vm.name in names or vm.instance_uuid in names
        if vm.template and not (include_templates or named):
            continue
        if (names or patterns) and not (
            named or any(fnmatch.fnmatchcase(vm.name, p) for p in patterns)
        ):
            continue
        if folder is not None and not _in_folder(vm, folder):
            continue
        if host is not None and vm.host != host:
            continue
        if cluster is not None and vm.cluster != cluster:
            continue
        if tagged is not None and vm.moid not in tagged:
            continue
        chosen.append(vm)
    return chosen


def excluded(vm: VMInfo, exclude: Sequence[str]) -> bool:
    """Whether ``vm`` matches one of ``exclude``: its name, its instanceUuid, or a glob on its
    name (a job's exclusions: what a folder, tag or pattern selects but must not be backed up)."""
    return any(vm.name == e or vm.instance_uuid == e or fnmatch.fnmatchcase(vm.name, e)
               for e in exclude)


def unmatched(
    chosen: Iterable[VMInfo], names: Sequence[str] = (), patterns: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The ``names`` and the ``patterns`` that no VM in ``chosen`` matches (see
    :func:`select_vms`)."""
    vms = list(chosen)
    missing = [n for n in names if not any(n in (v.name, v.instance_uuid) for v in vms)]
    empty = [p for p in patterns if not any(fnmatch.fnmatchcase(v.name, p) for v in vms)]
    return missing, empty


def vm_properties(session: Session, paths: Sequence[str]) -> list[tuple[Any, dict[str, Any]]]:
    """``(vm_ref, {path: value})`` for every VM, one paged property query (used by sweeps)."""
    from pyVmomi import vim

    return object_properties(session, vim.VirtualMachine, paths)


def object_properties(
    session: Session, vim_type: Any, paths: Sequence[str], root: Any = None,
) -> list[tuple[Any, dict[str, Any]]]:
    """``(ref, {path: value})`` for every object of ``vim_type`` (``vim.HostSystem``…) in the
    inventory — below ``root`` (a folder or datacenter) if given —, one paged property query;
    unset properties are absent."""
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    content = session.content
    view = session.call(
        content.viewManager.CreateContainerView, root or content.rootFolder, [vim_type], True,
        idempotent=True, what="create container view",
    )
    try:
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
                pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")
            ])],
            propSet=[pc.PropertySpec(type=vim_type, pathSet=list(paths))],
        )
        found = retrieve_paged(session, spec, what=vim_type.__name__.split(".")[-1])
    finally:
        session.call(view.DestroyView, idempotent=True, what="destroy view")
    rows = [(o.obj, {p.name: p.val for p in o.propSet}) for o in found]
    if vim_type is vim.VirtualMachine:
        for _, props in rows:
            if "name" in props:
                props["name"] = vm_name(str(props["name"]))  # the plain name (vsphere.names)
    return rows
