"""TLS for vSphere endpoints: verified by default, pinned by thumbprint, insecure on request.

Three modes, one :class:`TLSOptions`:

* ``cafile`` (or the system trust store when nothing is given): the chain and the host name are
  verified;
* ``thumbprint``: the peer certificate's SHA-256 must equal the pinned value (the usual way to
  trust a self-signed ESXi); chain and host name are not checked, the pin is — on *every*
  connection, not only the first (pyVmomi's own ``thumbprint=`` is checked only when CA
  verification failed, and it then turns verification off on the shared context);
* ``insecure=True``: nothing is verified.  Only when explicitly asked.

pyVmomi's ``SmartConnect`` silently disables verification for ``localhost``/``127.0.0.1``/``::1``
when no ``sslContext`` is passed (``pyVim.connect.getSslContext``).  :func:`build_ssl_context`
therefore always returns a context and the session always passes it, so a wrong certificate on
127.0.0.1 fails like anywhere else.  The same context is used for datastore HTTP transfers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass
from typing import Any

from vmkeep.errors import UsageError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def normalize_thumbprint(value: str) -> str:
    """``"AB:CD:…"`` or ``"abcd…"`` → 64 lower-case hex digits; SHA-1 thumbprints are refused."""
    cleaned = value.strip().lower()
    if cleaned.startswith("sha256:"):
        cleaned = cleaned[len("sha256:"):]
    cleaned = cleaned.replace(":", "").replace(" ", "")
    if not _HEX64.match(cleaned):
        if re.fullmatch(r"[0-9a-f]{40}", cleaned):
            raise UsageError("SHA-1 thumbprints are not accepted; pin the SHA-256 thumbprint")
        raise UsageError("thumbprint must be a SHA-256 digest (64 hex digits, colons allowed)")
    return cleaned


def cert_sha256(der: bytes) -> str:
    """SHA-256 thumbprint (lower-case hex, no colons) of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class TLSOptions:
    """How to verify a vSphere endpoint; at most one of ``cafile``/``thumbprint``/``insecure``.

    ``check_hostname`` applies to CA mode only (turn it off for an ESXi whose certificate names
    another host but chains to your CA).
    """

    cafile: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    check_hostname: bool = True

    def __post_init__(self) -> None:
        chosen = [bool(self.cafile), bool(self.thumbprint), self.insecure]
        if sum(chosen) > 1:
            raise UsageError("choose one of cafile, thumbprint or insecure")
        if self.thumbprint:
            object.__setattr__(self, "thumbprint", normalize_thumbprint(self.thumbprint))

    @property
    def mode(self) -> str:
        if self.insecure:
            return "insecure"
        if self.thumbprint:
            return "thumbprint"
        return "cafile" if self.cafile else "system"


class PinnedSSLContext(ssl.SSLContext):
    """A client context that accepts exactly one certificate, by SHA-256 thumbprint.

    The check runs in :meth:`wrap_socket` right after the handshake, so http.client, pyVmomi's
    connection pool and urllib3 all get it on every new connection.
    """

    pinned_sha256: str

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True) or b""
        if not hmac.compare_digest(cert_sha256(der), self.pinned_sha256):
            sock.close()
            err = ssl.SSLCertVerificationError("certificate thumbprint does not match the pin")
            err.verify_message = "SHA-256 thumbprint mismatch"
            err.verify_code = 0
            raise err
        return sock


def build_ssl_context(opts: TLSOptions) -> ssl.SSLContext:
    """A client SSLContext for ``opts``; never ``None`` (see the module docstring)."""
    if opts.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if opts.thumbprint:
        pinned = PinnedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.check_hostname = False
        pinned.verify_mode = ssl.CERT_NONE
        pinned.pinned_sha256 = opts.thumbprint
        return pinned
    try:
        ctx = ssl.create_default_context(cafile=opts.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load CA file {opts.cafile}: {exc}") from None
    ctx.check_hostname = opts.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
