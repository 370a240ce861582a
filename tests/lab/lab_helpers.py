"""Helpers for the lab's own tests (pyVmomi against the ``esx_lab`` fixture)."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim


def find_vm(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            if vm.name == name:
                return vm
    finally:
        view.Destroy()
    raise LookupError(name)


def wait(task: Any) -> Any:
    WaitForTask(task)
    return task.info.result


def vdisks(config: Any) -> list[Any]:
    return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def split_ds_path(p: str) -> tuple[str, str]:
    ds, rel = p[1:].split("] ", 1)
    return ds, rel


def folder_get(
    lab: Any, ds_path: str, start: int | None = None, end: int | None = None, timeout: float = 60
) -> bytes:
    """GET a datastore file through /folder (optionally a byte range, end inclusive)."""
    ds, rel = split_ds_path(ds_path)
    url = f"https://{lab.host}:{lab.port}/folder/{urllib.request.quote(rel)}?dcPath={lab.datacenter}&dsName={ds}"
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{lab.user}:{lab.password}".encode()).decode()
    }
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, context=lab.ssl_context(), timeout=timeout) as resp:
        return resp.read()


def flat_name(descriptor_ds_path: str) -> str:
    return descriptor_ds_path[: -len(".vmdk")] + "-flat.vmdk"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def remove_all_snapshots(vm: Any) -> None:
    if vm.snapshot is not None:
        wait(vm.RemoveAllSnapshots_Task())


def enable_cbt(vm: Any, on: bool = True) -> None:
    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=on)))


def snapshot(vm: Any, name: str, quiesce: bool = False) -> Any:
    return wait(vm.CreateSnapshot_Task(name, "vmkeep test", False, quiesce))


def changed_areas(vm: Any, snap: Any, key: int, change_id: str) -> list[tuple[int, int]]:
    """All pages of QueryChangedDiskAreas, as ESX clients loop over them."""
    out: list[tuple[int, int]] = []
    start = 0
    capacity = next(d.capacityInBytes for d in vdisks(snap.config) if d.key == key)
    while start < capacity:
        info = vm.QueryChangedDiskAreas(snap, key, start, change_id)
        out += [(a.start, a.length) for a in info.changedArea]
        assert info.length > 0
        start = info.startOffset + info.length
    return out


def covered(extents, areas) -> bool:
    """Every written byte lies inside a reported changed area."""
    for off, n in extents:
        end = off + n
        pos = off
        for a, length in areas:
            if a <= pos < a + length:
                pos = min(end, a + length)
                if pos >= end:
                    break
        if pos < end:
            return False
    return True


def host_entry(lab: Any, name: str) -> dict[str, Any]:
    """The lab's description of ESX host ``name`` (its own endpoint: address, port, cert_pem)."""
    return next(h for h in lab.hosts if h["name"] == name)


def host_context(lab: Any, name: str) -> Any:
    """An SSL context trusting exactly host ``name``'s own certificate."""
    import ssl

    ctx = ssl.create_default_context(cadata=host_entry(lab, name)["cert_pem"])
    ctx.check_hostname = False  # the certificate names the host; we connect to 127.0.0.1
    return ctx


def service_ticket(si: Any, url: str, method: str = "httpGet") -> str:
    spec = vim.SessionManager.HttpServiceRequestSpec(method=method, url=url)
    return si.content.sessionManager.AcquireGenericServiceTicket(spec).id


def host_url(lab: Any, host: str, ds_path: str, dc_path: str | None = None) -> str:
    ds, rel = split_ds_path(ds_path)
    h = host_entry(lab, host)
    return (f"https://{h['address']}:{h['port']}/folder/{urllib.request.quote(rel)}"
            f"?dcPath={dc_path or lab.datacenter}&dsName={ds}")


def host_get(
    lab: Any, si: Any, host: str, ds_path: str, start: int | None = None, end: int | None = None,
    *, ticket: str | None = None, timeout: float = 60,
) -> bytes:
    """GET a datastore file from ESX host ``host``'s own endpoint with a fresh service ticket."""
    url = host_url(lab, host, ds_path)
    headers = {"Cookie": f"vmware_cgi_ticket={ticket or service_ticket(si, url)}"}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, context=host_context(lab, host), timeout=timeout) as resp:
        return resp.read()


def lab_datacenter(si: Any, path: str = "Region/DC1") -> Any:
    """The lab's datacenter by inventory path (it sits in folder Region; DC2 is empty)."""
    dc = si.RetrieveContent().searchIndex.FindByInventoryPath(path)
    assert isinstance(dc, vim.Datacenter), path
    return dc


def vm_file_get(
    lab: Any, si: Any, vm_name: str, ds_path: str, start: int | None = None,
    end: int | None = None, timeout: float = 60,
) -> bytes:
    """A running VM's file read from the host running it (vCenter would answer 500 on it)."""
    host = find_vm(si, vm_name).runtime.host.name
    return host_get(lab, si, host, ds_path, start, end, timeout=timeout)


def guest_transfer_url(lab: Any, si: Any, vm_name: str, url: str) -> tuple[str, Any]:
    """A guest transfer URL ("https://*:PORT/…" on the VM's host) and the host's SSL context."""
    host = find_vm(si, vm_name).runtime.host.name
    return url.replace("*", host_entry(lab, host)["address"], 1), host_context(lab, host)
