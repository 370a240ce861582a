"""Helpers for the vSphere tests: self-signed certificates, a Range-capable HTTPS file server
(the datastore ``/folder`` endpoint in miniature, with fault switches) and a fake session."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Cert:
    cert: str
    key: str
    thumbprint: str


def make_cert(directory: Path, name: str = "server") -> Cert:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Cert(str(cert_path), str(key_path), hashlib.sha256(der).hexdigest())


@dataclass
class RangeServer:
    port: int
    files: dict[str, bytes] = field(default_factory=dict)  # "<ds>/<path>" -> content
    drop_next: int = 0
    short_next: int = 0
    fail_next: int = 0
    unauthorized_next: int = 0
    retry_after: str | None = None  # Retry-After of the 503s (fail_next)
    ignore_range: bool = False  # answer 200 with the whole file, whatever Range says
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)


def _handler(state: RangeServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _key(self) -> str:
            parts = urlsplit(self.path)
            ds = parse_qs(parts.query).get("dsName", [""])[0]
            return f"{ds}/{unquote(parts.path.removeprefix('/folder/'))}"

        def _fault(self) -> bool:
            self.requests_log()
            if state.drop_next:
                state.drop_next -= 1
                self.close_connection = True
                self.connection.close()
                return True
            if state.fail_next:
                state.fail_next -= 1
                self.send_response(503)
                if state.retry_after is not None:
                    self.send_header("Retry-After", state.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            if state.unauthorized_next:
                state.unauthorized_next -= 1
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            return False

        def requests_log(self) -> None:
            state.requests.append((self.command, self.path, dict(self.headers)))

        def _send(self, head_only: bool) -> None:
            if self._fault():
                return
            data = state.files.get(self._key())
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            rng = self.headers.get("Range")
            status, body = 200, data
            if rng and not state.ignore_range:
                start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
                start, end = int(start_s), min(int(end_s), len(data) - 1)
                status, body = 206, data[start : end + 1]
            declared = len(body)
            if state.short_next and not head_only:
                state.short_next -= 1
                body = body[: len(body) // 2]
                declared = len(body)
            self.send_response(status)
            self.send_header("Content-Length", str(declared if not head_only else len(data)))
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(False)

        def do_HEAD(self) -> None:
            self._send(True)

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self._fault():
                return
            state.uploads[self._key()] = body
            state.files[self._key()] = body
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class FakeSession:
    """Just enough of :class:`Session` for the HTTP client and transports."""

    def __init__(self, port: int, ssl_context: ssl.SSLContext) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.ssl_context = ssl_context
        self.generation = 1
        self.relogins = 0

    @property
    def cookie(self) -> str:
        return f'vmware_soap_session="s{self.generation}"'

    def relogin(self, seen: int | None = None) -> None:
        self.relogins += 1
        self.generation += 1
