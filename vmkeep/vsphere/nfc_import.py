"""Create VMs with disk content through an NFC import lease (``ImportVApp`` + ``HttpNfcLease``),
VMware's supported way to write new disks on any datastore type (VMFS, NFS, vSAN, vVols).

Contract:

- :func:`import_vm` calls ``ResourcePool.ImportVApp`` with a ``VirtualMachineImportSpec`` holding
  a ``ConfigSpec`` (as ``govc import.vmdk`` does), waits for the lease to be ``ready`` (or raises
  with the lease's error) and returns an :class:`ImportLease` whose ``vm`` is the new VM.
- :meth:`ImportLease.disk_urls` lists one upload URL per disk, in device order (``*`` in the URL
  stands for the host we talk to; :class:`~vmkeep.vsphere.httpclient.HTTPClient` maps it).
- :meth:`ImportLease.upload` POSTs a streamOptimized VMDK (an iterator of bytes, sent with chunked
  transfer encoding, never held in memory) — not retried: a half-sent stream cannot be resumed.
- While the lease is open a keeper thread reports progress every ``keepalive`` seconds
  (``HttpNfcLeaseProgress``), which also keeps the lease from timing out.
- :meth:`ImportLease.complete` ends it; :meth:`ImportLease.abort` (on any failure) aborts it —
  vCenter then removes the imported VM; callers still destroy it if it is left.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.hosts import url_and_tls
from vmkeep.vsphere.httpclient import HTTPClient
from vmkeep.vsphere.vm_lookup import taken_as_vm_exists

log = logging.getLogger(__name__)
STREAM_TYPE = "application/x-vnd.vmware-streamVmdk"


class ImportLease:
    """An open import lease (see the module docstring)."""

    def __init__(self, session: Session, lease: Any, keepalive: float = 20.0) -> None:
        self.session = session
        self.lease = lease
        self.info = session.get(lease, "info")
        self.vm = self.info.entity
        self.percent = 0
        self.total = 0  # bytes of disk capacity the whole import covers (for progress)
        self.done = 0
        self._stop = threading.Event()
        self._keeper = threading.Thread(
            target=self._keep, args=(keepalive,), name="nfc-lease-keeper", daemon=True
        )
        self._keeper.start()

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` of disk capacity as transferred; updates the reported percent."""
        self.done += nbytes
        if self.total > 0:
            self.percent = min(99, 100 * self.done // self.total)

    def _keep(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.session.call(self.lease.HttpNfcLeaseProgress, int(self.percent),
                                  idempotent=True, what="lease progress")
            except Exception as exc:
                log.warning("NFC lease progress: %s", exc)

    def disk_urls(self) -> list[str]:
        """The upload URL of each disk, in device order (by the ``:N`` index of the key)."""
        urls = [d for d in (self.info.deviceUrl or []) if getattr(d, "disk", False)]

        def order(d: Any) -> int:
            m = re.search(r":(\d+)$", str(d.key or ""))
            return int(m.group(1)) if m else 0

        return [d.url for d in sorted(urls, key=order)]

    def urls_for(self, disks: list[dict[str, Any]]) -> list[str]:
        """The upload URL of each of ``disks`` (``file_name``, ``controller``: ``(type, bus)``,
        ``unit_number``), matched by the device URL's target file name (vcsim, ESX), else by the
        ``<Controller><bus>:<unit>`` at the end of its import key or key (vCenter), else by
        device order."""
        entries = [d for d in (self.info.deviceUrl or []) if getattr(d, "disk", False)]
        if len(entries) != len(disks):
            raise VSphereError(f"the import lease offers {len(entries)} disk URLs for "
                               f"{len(disks)} disks")
        out: list[str] = []
        for want in disks:
            base = str(want["file_name"]).rsplit("/", 1)[-1].split("] ")[-1]
            hit = next((e for e in entries if e.targetId == base
                        or str(e.url).rsplit("/", 1)[-1] == base), None)
            if hit is None and want.get("controller"):
                kind, bus = want["controller"]
                tail = f"{kind}{bus}:{want.get('unit_number')}"
                hit = next((e for e in entries if str(e.importKey or "").endswith(tail)
                            or str(e.key or "").endswith(tail)), None)
            if hit is None:
                return self.disk_urls()
            out.append(str(hit.url))
        if len(set(out)) != len(out):
            return self.disk_urls()
        return out

    def upload(self, url: str, body: Iterable[bytes], what: str) -> None:
        """POST one disk's streamOptimized VMDK to ``url`` (on the ESXi host that serves the
        lease, verified against its own certificate: :func:`vmkeep.vsphere.hosts.url_and_tls`)."""
        url, context = url_and_tls(self.session, url)
        HTTPClient(self.session, retries=0).request(
            "POST", url, headers={"Content-Type": STREAM_TYPE},
            body=iter(body), idempotent=False, what=what, context=context,
        )

    def complete(self) -> None:
        self._stop.set()
        self.session.call(self.lease.HttpNfcLeaseProgress, 100, idempotent=True,
                          what="lease progress")
        self.session.call(self.lease.HttpNfcLeaseComplete, what="complete NFC lease")

    def abort(self, why: str) -> None:
        """Abort the lease (best effort: the caller is already failing)."""
        from pyVmomi import vmodl

        self._stop.set()
        try:
            fault = vmodl.fault.SystemError(reason=why[:200])
            self.session.call(self.lease.HttpNfcLeaseAbort, fault, what="abort NFC lease")
        except Exception as exc:
            log.warning("could not abort the NFC lease: %s", exc)


def import_vm(
    session: Session,
    pool: Any,
    folder: Any,
    host: Any,
    spec: Any,
    *,
    timeout: float = 600.0,
    keepalive: float = 20.0,
) -> ImportLease:
    """``ImportVApp`` the VM of ``spec`` (a ``ConfigSpec``) and wait for its lease to be ready.
    Into a vApp (``pool`` is one) no folder is passed: a vApp's VMs are in no folder."""
    from pyVmomi import vim

    ispec = vim.vm.VmImportSpec(configSpec=spec)
    into = None if isinstance(pool, vim.VirtualApp) else folder
    with taken_as_vm_exists(spec.name):
        lease = session.call(pool.ImportVApp, ispec, into, host, what=f"ImportVApp {spec.name}")
    deadline = time.monotonic() + timeout
    while True:
        state = str(session.get(lease, "state"))
        if state == "ready":
            return ImportLease(session, lease, keepalive)
        if state == "error":
            err = session.get(lease, "error")
            msg = getattr(err, "msg", None) or type(err).__name__
            raise VSphereError(f"NFC import lease for {spec.name} failed: {msg}")
        if time.monotonic() > deadline:
            raise VSphereError(f"NFC import lease for {spec.name} not ready after {timeout:.0f} s")
        time.sleep(0.5)
