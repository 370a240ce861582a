"""HostEndpoint: which URLs a host serves, ``*`` replaced by its address, its pinned certificate;
the per-host request cap."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest

from tests.vsphere.vsphere_helpers import Cert
from vmkeep.vsphere import hosts
from vmkeep.vsphere.errors import NotFound
from vmkeep.vsphere.tls import PinnedSSLContext, cert_sha256


def endpoint(cert_pem: str | None = None, port: int = 443) -> hosts.HostEndpoint:
    return hosts.HostEndpoint("esx01.example.com", "host-1", "10.0.0.5", port, cert_pem)


def test_star_urls_are_resolved_to_the_hosts_address() -> None:
    ep = endpoint()
    assert ep.serves("https://*/guestFile?id=1") and ep.serves("https://*:8443/guestFile?id=1")
    assert ep.resolve("https://*/guestFile?id=1&token=x") == \
        "https://10.0.0.5:443/guestFile?id=1&token=x"
    assert ep.resolve("https://*:8443/guestFile?id=1") == "https://10.0.0.5:8443/guestFile?id=1"
    assert ep.serves("https://esx01.example.com/guestFile?id=1")
    assert ep.serves("https://10.0.0.5/x") and not ep.serves("https://10.0.0.5:8443/x")
    assert not ep.serves("https://vcenter.example.com/guestFile?id=1")
    assert ep.url("/folder/a?dcPath=R%2FDC1") == "https://10.0.0.5:443/folder/a?dcPath=R%2FDC1"
    v6 = hosts.HostEndpoint("h", "host-2", "fd00::5", 443, None)
    assert v6.resolve("https://*/x") == "https://[fd00::5]:443/x"


def test_context_pins_exactly_the_hosts_certificate(tls_cert: Cert) -> None:
    pem = Path(tls_cert.cert).read_text()
    ctx = endpoint(pem).ssl_context()
    assert isinstance(ctx, PinnedSSLContext)
    assert ctx.pinned_sha256 == cert_sha256(ssl.PEM_cert_to_DER_cert(pem))
    with pytest.raises(NotFound):
        endpoint(None).ssl_context()


def test_host_slots_cap_requests_in_flight_per_host() -> None:
    hosts.set_host_concurrency(2)
    try:
        inside, peak, lock = 0, 0, threading.Lock()
        release = threading.Event()
        entered = threading.Semaphore(0)

        def work() -> None:
            nonlocal inside, peak
            with hosts.host_slot("10.0.0.5", 443):
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                entered.release()
                release.wait(60)
                with lock:
                    inside -= 1

        threads = [threading.Thread(target=work) for _ in range(5)]
        for t in threads:
            t.start()
        assert entered.acquire(timeout=60) and entered.acquire(timeout=60)
        assert not entered.acquire(timeout=0.2)  # the third waits for a slot
        release.set()
        for t in threads:
            t.join(60)
        assert peak == 2
    finally:
        hosts.set_host_concurrency(hosts.MAX_PER_HOST)


def test_one_endpoint_rule_from_host_properties(tls_cert: Cert) -> None:
    """The rule backups and ``vmkeep doctor`` share: first VMkernel IP, port, certificate."""
    from types import SimpleNamespace as NS

    pem = Path(tls_cert.cert).read_text()
    signed = [b - 256 if b > 127 else b for b in f"\n{pem}\n".encode()]  # xsd:byte[] from pyVmomi
    vnics = [NS(spec=NS(ip=NS(ipAddress=""))), NS(spec=NS(ip=NS(ipAddress="10.0.0.7")))]
    props = {"name": "esx02", "summary.config.port": 8443, "config.certificate": signed,
             "config.network.vnic": vnics}
    ep = hosts.endpoint_from_props("host-2", props)
    assert (ep.name, ep.moid, ep.address, ep.port) == ("esx02", "host-2", "10.0.0.7", 8443)
    assert ep.cert_pem == pem.strip()
    bare = hosts.endpoint_from_props("host-3", {"name": "esx03", "config.certificate": []})
    assert (bare.address, bare.port, bare.cert_pem) == ("esx03", 443, None)
