"""ESXi hosts as HTTPS endpoints: where a VM's disks and guest transfers are served from.

Through vCenter, datastore ``/folder`` requests are handed to an arbitrary host (a file the
running VM's host holds open then fails with HTTP 500, "only downloadable from the lock owner")
and guest transfer URLs point at the host running the VM (``https://*/guestFile?…``).  vmkeep
therefore talks to the host itself:

* :func:`host_endpoints` reads every ``HostSystem`` once per session: its name, address (the
  first VMkernel NIC's IP, else the name), HTTPS port (``summary.config.port``, 443 on a real
  host) and certificate (``config.certificate``, PEM);
* :meth:`HostEndpoint.ssl_context` trusts exactly that certificate (SHA-256 pin of the DER):
  vCenter's ``--cafile`` / ``--thumbprint`` describe vCenter, not the hosts;
* :func:`host_slot` caps the requests in flight per host in this process (default
  :data:`MAX_PER_HOST`, what hostd tolerates; the lab answers 503 above it).

The address rule and the need for port 443 from the data mover to each host are documented in
``docs/real-vsphere.md`` ("Transports and ports").
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import NotFound
from vmkeep.vsphere.tls import PinnedSSLContext, cert_sha256

MAX_PER_HOST = 4

_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()
_LIMIT = [MAX_PER_HOST]


@dataclass(frozen=True)
class HostEndpoint:
    """One ESXi host's HTTPS endpoint and the certificate it must present."""

    name: str
    moid: str
    address: str
    port: int
    cert_pem: str | None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address}:{self.port})"

    def ssl_context(self) -> ssl.SSLContext:
        """A context accepting only this host's certificate (``NotFound`` when it has none)."""
        if not self.cert_pem:
            raise NotFound(f"certificate of ESXi host {self.name} (HostSystem.config.certificate)")
        der = ssl.PEM_cert_to_DER_cert(self.cert_pem)
        ctx = PinnedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.pinned_sha256 = cert_sha256(der)
        return ctx

    def url(self, path_and_query: str) -> str:
        """``https://address:port`` + ``path_and_query``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}{path_and_query}"

    def serves(self, url: str) -> bool:
        """True when ``url`` points at this host (``*``, its name, or its address and port)."""
        parts = urlsplit(url)
        if parts.hostname in ("*", self.name.lower()):
            return True
        return parts.hostname == self.address and (parts.port or 443) == self.port

    def resolve(self, url: str) -> str:
        """A URL vSphere handed out for this host, with ``*`` replaced by the host's address."""
        parts = urlsplit(url)
        if parts.hostname not in ("*", None):
            return url
        port = parts.port or self.port
        host = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((parts.scheme or "https", f"{host}:{port}", parts.path, parts.query, ""))


#: the HostSystem properties an endpoint is built from (:func:`endpoint_from_props`)
ENDPOINT_PROPS = ["name", "summary.config.port", "config.certificate", "config.network.vnic"]


def cert_text(raw: Any) -> str | None:
    """``config.certificate`` (xsd:byte[]: pyVmomi gives signed ints) as PEM text; ``None``
    when unset or empty."""
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw
    else:
        data = bytes(b & 0xFF for b in raw) if not isinstance(raw, bytes | bytearray) else raw
        text = bytes(data).decode("ascii", errors="replace")
    return text.strip() or None


def host_address(props: dict[str, Any], name: str) -> str:
    """The address vmkeep reaches a host at: its first VMkernel NIC's IP, else ``name``."""
    for vnic in props.get("config.network.vnic") or []:
        ip = getattr(getattr(getattr(vnic, "spec", None), "ip", None), "ipAddress", None)
        if ip:
            return str(ip)
    return name


def endpoint_from_props(moid: str, props: dict[str, Any]) -> HostEndpoint:
    """A host's endpoint from its :data:`ENDPOINT_PROPS` (the one rule; doctor uses it too):
    address by :func:`host_address`, port ``summary.config.port`` else 443, certificate by
    :func:`cert_text`."""
    name = str(props.get("name", moid))
    return HostEndpoint(
        name=name, moid=moid, address=host_address(props, name),
        port=int(props.get("summary.config.port") or 443),
        cert_pem=cert_text(props.get("config.certificate")),
    )


def host_endpoints(session: Session) -> dict[str, HostEndpoint]:
    """Every host of the inventory by name (cached on the session for its lifetime)."""
    cached = getattr(session, "_vmkeep_hosts", None)
    if cached is not None:
        return cached
    from pyVmomi import vim, vmodl

    content = session.content
    view = session.call(
        content.viewManager.CreateContainerView, content.rootFolder, [vim.HostSystem], True,
        what="list hosts",
    )
    try:
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(
                obj=view, skip=True,
                selectSet=[pc.TraversalSpec(name="v", path="view", skip=False,
                                            type=vim.view.ContainerView)],
            )],
            propSet=[pc.PropertySpec(type=vim.HostSystem, pathSet=list(ENDPOINT_PROPS))],
        )
        found = session.call(
            content.propertyCollector.RetrieveContents, [spec], idempotent=True,
            what="read hosts",
        ) or []
    finally:
        with contextlib.suppress(Exception):
            view.Destroy()
    hosts: dict[str, HostEndpoint] = {}
    for obj in found:
        endpoint = endpoint_from_props(obj.obj._moId, {p.name: p.val for p in obj.propSet})
        hosts[endpoint.name] = endpoint
    session._vmkeep_hosts = hosts  # type: ignore[attr-defined]
    return hosts


def host_endpoint(session: Session, name: str | None) -> HostEndpoint | None:
    """The endpoint of the host called ``name`` (``None`` for no name or an unknown host)."""
    if not name:
        return None
    return host_endpoints(session).get(name)


def url_and_tls(session: Session, url: str) -> tuple[str, ssl.SSLContext]:
    """Where a URL vSphere handed out (an NFC lease's device URL) points, and how to verify it.

    ``*`` (or no host) is the endpoint the session talks to, with the session's TLS; a URL that
    names an ESXi host of the inventory (by name, or by address and port) is verified against
    that host's own certificate (``HostSystem.config.certificate``) — vCenter's ``--cafile`` /
    ``--thumbprint`` describe vCenter, and the lease's SHA-1 ``sslThumbprint`` is too weak to
    pin.  Any other host keeps the session's TLS settings."""
    parts = urlsplit(url)
    if parts.hostname in (None, "*"):
        netloc = f"{session.host}:{session.port}"
        return urlunsplit((parts.scheme or "https", netloc, parts.path, parts.query, "")), \
            session.ssl_context
    for endpoint in host_endpoints(session).values():
        if endpoint.serves(url) and endpoint.cert_pem:
            return url, endpoint.ssl_context()
    return url, session.ssl_context


def set_host_concurrency(limit: int) -> None:
    """Change the per-host cap of requests in flight (new hosts only; tests and tuning)."""
    with _SLOTS_LOCK:
        _LIMIT[0] = max(1, limit)
        _SLOTS.clear()


@contextlib.contextmanager
def host_slot(address: str, port: int) -> Iterator[None]:
    """Hold one of the host's request slots (shared by every reader in this process)."""
    key = (address, port)
    with _SLOTS_LOCK:
        sem = _SLOTS.get(key)
        if sem is None:
            sem = _SLOTS[key] = threading.BoundedSemaphore(_LIMIT[0])
    with sem:
        yield
