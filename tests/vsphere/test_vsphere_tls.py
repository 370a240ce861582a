"""TLS option handling: verified by default (localhost included), pinned thumbprints, insecure."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading

import pytest

from tests.vsphere.vsphere_helpers import Cert
from vmkeep.errors import UsageError
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import TLSVerificationFailed
from vmkeep.vsphere.tls import PinnedSSLContext, TLSOptions, build_ssl_context, normalize_thumbprint


def test_thumbprint_formats() -> None:
    hexa = "ab" * 32
    assert normalize_thumbprint(":".join(["AB"] * 32)) == hexa
    assert normalize_thumbprint(f"sha256:{hexa.upper()}") == hexa
    with pytest.raises(UsageError, match="SHA-1"):
        normalize_thumbprint("aa:" * 19 + "aa")
    with pytest.raises(UsageError):
        normalize_thumbprint("zz" * 32)


def test_options_are_exclusive() -> None:
    with pytest.raises(UsageError):
        TLSOptions(cafile="x.pem", insecure=True)
    with pytest.raises(UsageError):
        TLSOptions(thumbprint="ab" * 32, insecure=True)
    assert TLSOptions().mode == "system"


def test_contexts_per_mode(tls_cert: Cert) -> None:
    default = build_ssl_context(TLSOptions())
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    ca = build_ssl_context(TLSOptions(cafile=tls_cert.cert))
    assert ca.verify_mode == ssl.CERT_REQUIRED and ca.check_hostname
    pinned = build_ssl_context(TLSOptions(thumbprint=tls_cert.thumbprint))
    assert isinstance(pinned, PinnedSSLContext)
    insecure = build_ssl_context(TLSOptions(insecure=True))
    assert insecure.verify_mode == ssl.CERT_NONE
    with pytest.raises(UsageError):
        build_ssl_context(TLSOptions(cafile="/nonexistent/ca.pem"))


@pytest.fixture
def tls_server(tls_cert: Cert):  # type: ignore[no-untyped-def]
    """A bare TLS server on 127.0.0.1 that completes handshakes and answers one HTTP line."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_cert.cert, tls_cert.key)
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


def _get(port: int, opts: TLSOptions, host: str = "127.0.0.1") -> bytes:
    conn = http.client.HTTPSConnection(host, port, context=build_ssl_context(opts), timeout=60)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read()
    finally:
        conn.close()


def test_ca_thumbprint_and_insecure_against_localhost(tls_server: int, tls_cert: Cert) -> None:
    assert _get(tls_server, TLSOptions(cafile=tls_cert.cert)) == b"ok"
    assert _get(tls_server, TLSOptions(thumbprint=tls_cert.thumbprint)) == b"ok"
    assert _get(tls_server, TLSOptions(insecure=True)) == b"ok"


def test_wrong_cert_on_localhost_fails(tls_server: int) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(tls_server, TLSOptions())  # system CAs: a self-signed localhost cert must fail
    with pytest.raises(ssl.SSLCertVerificationError, match="thumbprint"):
        _get(tls_server, TLSOptions(thumbprint="00" * 32))


def test_pin_checked_on_every_connection(tls_server: int, tls_cert: Cert) -> None:
    ctx = build_ssl_context(TLSOptions(thumbprint=tls_cert.thumbprint))
    for _ in range(3):
        conn = http.client.HTTPSConnection("127.0.0.1", tls_server, context=ctx, timeout=60)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        conn.close()
    ctx.pinned_sha256 = "00" * 32  # type: ignore[attr-defined]
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server, context=ctx, timeout=60)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_connect_refuses_untrusted_localhost(tls_server: int, host: str) -> None:
    """pyVmomi exempts localhost from verification when no context is given; we never do."""
    from vmkeep.vsphere.connection import connect

    with pytest.raises(TLSVerificationFailed) as info:
        connect(f"https://{host}:{tls_server}/sdk", Credentials("u", "canary-Pw-1"), timeout=60)
    assert "canary" not in str(info.value)
