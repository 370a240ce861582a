"""HTTPS to the vSphere endpoint outside SOAP: datastore ``/folder`` files and guest transfers.

One :class:`HTTPClient` per session (or per disk), on urllib3: one connection pool per endpoint
(vCenter, each ESXi host), shared by the threads reading ranges in parallel, keep-alive
connections reused.  The session's TLS context is reused for vCenter, so the same CA / pinned
thumbprint / insecure choice applies; an ESXi host's context pins that host's certificate
(:meth:`vmkeep.vsphere.hosts.HostEndpoint.ssl_context`), checked both by the context and by
urllib3's ``assert_fingerprint`` on every new connection.  A certificate that fails verification
raises :class:`TLSVerificationFailed` at once (retrying cannot help).  The SOAP session cookie
(``vmware_soap_session``) authenticates datastore access.

Retries (urllib3's own retries are off: vmkeep's rules below need the session, the ticket and
the per-host slot between attempts), paced by :class:`vmkeep.retry.RetryPolicy`: ``GET``
(``get_range``, ``head_size``) is idempotent and retried on dropped connections, 5xx answers and
short bodies (``retries`` times, backing off from ``backoff`` seconds, doubling), then raises a
transient :class:`DatastoreIOError`.  A 401/403 triggers one re-login and retry, unless the
session is still logged in: a 403 then is a missing privilege (:class:`PermissionDenied`,
``Datastore.Browse``).  ``PUT`` is retried only when the body is seekable (it is rewound), since
the datastore file is simply overwritten.

Real-vCenter rules (``docs/real-vsphere.md``):

* 503 (a busy host or vCenter) is waited out: ``Retry-After`` seconds (capped at 30) or the
  backoff, up to ``busy_retries`` times, apart from the error retries;
* 500 "only downloadable from the lock owner" raises :class:`FileLocked` at once (retrying the
  same route cannot help);
* a 200 answer to a Range request whose body is larger than the range raises
  :class:`RangeIgnored` before the body is read (the whole file is never buffered; the
  connection is closed, not returned to the pool);
* requests may go to another endpoint than the session's (an ESXi host): ``context`` is that
  endpoint's TLS context, ``auth`` gives the Cookie header per attempt (a one-time service
  ticket), ``slot`` holds a per-host request slot (:func:`vmkeep.vsphere.hosts.host_slot`)
  around each attempt; when no attempt got any answer, :class:`HostUnreachable` is raised.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import InsecureRequestWarning
from urllib3.exceptions import SSLError as Urllib3SSLError

from vmkeep.retry import HTTP_BUSY_RETRY, HTTP_ERROR_RETRY
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import (
    NETWORK_ERRORS,
    DatastoreIOError,
    FileLocked,
    HostUnreachable,
    NotFound,
    PermissionDenied,
    RangeIgnored,
    TLSVerificationFailed,
    VSphereError,
)
from vmkeep.vsphere.tls import PinnedSSLContext

log = logging.getLogger(__name__)

# ``--insecure`` is the user's explicit choice (logged when the session is made); urllib3 would
# otherwise warn on every request of it.
warnings.filterwarnings("ignore", category=InsecureRequestWarning)

#: connections kept per endpoint (more may be opened under load; the surplus is closed)
POOL_SIZE = 16


#: what a failed transfer may raise below vmkeep's own errors (network, TLS, HTTP framing)
TRANSFER_ERRORS: tuple[type[BaseException], ...] = (Urllib3Error, *NETWORK_ERRORS)


def https_pool(
    host: str, port: int, context: ssl.SSLContext, timeout: float, maxsize: int = POOL_SIZE
) -> urllib3.HTTPSConnectionPool:
    """A urllib3 pool to ``host:port`` verified by ``context`` — the one way vmkeep opens HTTPS
    to vSphere outside SOAP (datastore files, guest transfers, NFC device URLs, vAPI tagging).

    A :class:`~vmkeep.vsphere.tls.PinnedSSLContext` is also pinned through urllib3's
    ``assert_fingerprint``; a CA context without host name checking is honoured as such
    (urllib3 would otherwise check the name itself).  urllib3 never retries or redirects.
    """
    pin = getattr(context, "pinned_sha256", None) if isinstance(context, PinnedSSLContext) else None
    return urllib3.HTTPSConnectionPool(
        host, port, maxsize=maxsize, block=False, retries=False,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        ssl_context=context, assert_fingerprint=pin,
        assert_hostname=None if context.check_hostname else False,
    )


def folder_url(datacenter: str, datastore: str, path: str) -> str:
    """``/folder/<path>?dcPath=<dc>&dsName=<ds>`` (path segments quoted)."""
    query = urlencode({"dcPath": datacenter, "dsName": datastore})
    return f"/folder/{quote(path.lstrip('/'), safe='/')}?{query}"


class _Retry(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _tls_refusal(exc: BaseException) -> str | None:
    """Why TLS verification refused the peer, or ``None`` for any other failure."""
    if not isinstance(exc, Urllib3SSLError):
        return None
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, ssl.SSLCertVerificationError):
        return inner.verify_message or "certificate rejected"
    if "fingerprint" in str(exc).lower():
        return "SHA-256 thumbprint mismatch"
    return None


class HTTPClient:
    """Thread-safe HTTPS client bound to a :class:`Session` (see module docstring)."""

    def __init__(
        self,
        session: Session,
        *,
        timeout: float = 120.0,
        retries: int = HTTP_ERROR_RETRY.retries,
        backoff: float = HTTP_ERROR_RETRY.delay_s,
        busy_retries: int = HTTP_BUSY_RETRY.retries,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.errors = replace(HTTP_ERROR_RETRY, retries=retries, delay_s=backoff)
        self.busy = replace(HTTP_BUSY_RETRY, retries=busy_retries, delay_s=backoff)
        self._pools: dict[tuple[str, int, object], urllib3.HTTPSConnectionPool] = {}
        self._lock = threading.Lock()

    @property
    def retries(self) -> int:
        return self.errors.retries

    # -- connections ----------------------------------------------------------------------------
    def _pool(
        self, host: str, port: int, context: ssl.SSLContext | None = None
    ) -> urllib3.HTTPSConnectionPool:
        """The pool for ``host:port`` under ``context`` (a pinned context: by its pin)."""
        ctx = context or self.session.ssl_context
        pin = getattr(ctx, "pinned_sha256", None) if isinstance(ctx, PinnedSSLContext) else None
        key = (host, port, pin or id(ctx))  # the pool holds ctx: its id stays unique
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = https_pool(host, port, ctx, self.timeout)
            return pool

    def _target(self, url: str) -> tuple[str, int, str]:
        parts = urlsplit(url)
        if not parts.scheme:
            return self.session.host, self.session.port, url
        host = parts.hostname or self.session.host
        if host == "*":  # ESXi hands out guest transfer URLs as https://*/...
            host = self.session.host
        port = parts.port or (self.session.port if host == self.session.host else 443)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return host, port, path

    # -- requests -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        cookie: bool = True,
        idempotent: bool = True,
        ok: tuple[int, ...] = (200, 201, 204, 206),
        expect_length: int | None = None,
        what: str | None = None,
        context: ssl.SSLContext | None = None,
        auth: Callable[[], str] | None = None,
        max_body: int | None = None,
        slot: bool = False,
        retries: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request, return ``(status, headers, body)``; retry rules in the module doc."""
        host, port, path = self._target(url)
        label = what or f"{method} {path.split('?')[0]}"
        errors = self.errors if retries is None else replace(self.errors, retries=retries)
        relogged = False
        attempt = busy = 0
        answered: list[bool] = []  # non-empty once any attempt got a status line
        sent = False
        while True:
            generation = self.session.generation
            hdrs = dict(headers or {})
            if auth is not None:
                hdrs["Cookie"] = auth()
            elif cookie:
                hdrs["Cookie"] = self.session.cookie
            if sent and body is not None and not isinstance(body, bytes | bytearray):
                if not hasattr(body, "seek"):
                    raise DatastoreIOError(label, "cannot resend a streamed body")
                body.seek(0)
            sent = True
            try:
                with self._slot(host, port, slot):
                    status, resp_headers, data = self._send(
                        self._pool(host, port, context), method, path, body, hdrs, label,
                        max_body, answered,
                    )
                if status == 403 and (cookie or auth is not None) and self.session.is_logged_in():
                    # A live session refused: a missing privilege, not an expiry.
                    raise PermissionDenied(f"{label} {path.split('?')[0]}", "Datastore.Browse",
                                           "its datastore")
                if status in (401, 403) and (cookie or auth is not None) and not relogged:
                    relogged = True
                    if auth is None:
                        self.session.relogin(generation)
                    continue
                if status == 404:
                    raise NotFound(f"{label}: HTTP 404")
                if status == 503 and busy < self.busy.retries:
                    busy += 1
                    pause = self.busy.pause(busy, resp_headers.get("retry-after"))
                    log.info("%s: HTTP 503 (busy); retry %d in %.1f s", label, busy, pause)
                    time.sleep(pause)
                    continue
                if status == 500 and b"lock owner" in data:
                    raise FileLocked(label, data.decode(errors="replace").strip()[:200])
                if status >= 500:
                    raise _Retry(f"HTTP {status}")
                if status not in ok:
                    detail = data[:200].decode("utf-8", "replace").strip()
                    raise DatastoreIOError(
                        label, f"HTTP {status}" + (f" ({detail})" if detail else "")
                    )
                if expect_length is not None and len(data) != expect_length:
                    raise _Retry(f"short read: {len(data)} of {expect_length} bytes")
                return status, resp_headers, data
            except VSphereError:
                raise
            except (_Retry, Urllib3Error, *NETWORK_ERRORS) as exc:
                refusal = _tls_refusal(exc)
                if refusal is not None:
                    raise TLSVerificationFailed(f"{host}:{port}", f"{refusal} ({label})") from None
                why = exc.why if isinstance(exc, _Retry) else type(exc).__name__
                if attempt >= errors.retries or not idempotent:
                    if not answered and (host, port) != (self.session.host, self.session.port):
                        raise HostUnreachable(f"{host}:{port}", f"{label}: {why}") from None
                    raise DatastoreIOError(label, why) from None
                attempt += 1
                pause = errors.delay(attempt)
                log.warning("%s: %s; retry %d in %.1f s", label, why, attempt, pause)
                time.sleep(pause)

    def _send(
        self, pool: urllib3.HTTPSConnectionPool, method: str, path: str, body: Any,
        headers: dict[str, str], label: str, max_body: int | None, answered: list[bool],
    ) -> tuple[int, dict[str, str], bytes]:
        """One attempt: ``(status, lower-cased headers, body)``; a refused 200 is never read.
        ``answered`` gets an entry as soon as the server sent a status line."""
        resp = pool.urlopen(
            method, path, body=body, headers=headers, retries=False, redirect=False,
            preload_content=False, decode_content=False, assert_same_host=False,
        )
        answered.append(True)
        try:
            resp_headers = {k.lower(): v for k, v in resp.headers.items()}
            if resp.status == 200 and max_body is not None:
                self._refuse_whole_file(label, resp_headers, max_body)
            data = resp.read()
        except BaseException:
            resp.close()  # unread or broken: the connection must not go back to the pool
            raise
        finally:
            resp.release_conn()
        return resp.status, resp_headers, data

    @contextlib.contextmanager
    def _slot(self, host: str, port: int, wanted: bool) -> Iterator[None]:
        if not wanted:
            yield
            return
        from vmkeep.vsphere.hosts import host_slot

        with host_slot(host, port):
            yield

    def _refuse_whole_file(self, label: str, headers: Mapping[str, str], max_body: int) -> None:
        """A 200 to a Range request: refuse it (unread) when the body is larger than the range."""
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= max_body:
            return
        raise RangeIgnored(
            label,
            f"the server ignored the Range header and answered 200 with "
            f"{length or 'an unknown number of'} bytes; vmkeep does not buffer whole files",
        )

    # -- datastore helpers ----------------------------------------------------------------------
    def get_range(self, url: str, offset: int, length: int, **kw: Any) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (Range GET; short bodies are retried).

        ``kw`` goes to :meth:`request` (``context``, ``auth``, ``slot`` for a host endpoint).
        A 200 answer larger than ``length`` raises :class:`RangeIgnored` unread.
        """
        if length <= 0:
            return b""
        hdr = {"Range": f"bytes={offset}-{offset + length - 1}"}
        status, _, data = self.request(
            "GET", url, headers=hdr, expect_length=None, what=f"read {offset}+{length}",
            max_body=length, **kw,
        )
        if status == 200:  # server ignored the Range header
            data = data[offset : offset + length]
        if len(data) != length:
            # one more honest try through the retry loop
            _, _, data = self.request(
                "GET", url, headers=hdr, ok=(206,), expect_length=length,
                what=f"read {offset}+{length}", max_body=length, **kw,
            )
        return data

    def head_size(self, url: str, **kw: Any) -> int:
        _, headers, _ = self.request("HEAD", url, what="HEAD", **kw)
        try:
            return int(headers["content-length"])
        except (KeyError, ValueError):
            raise DatastoreIOError(url.split("?")[0], "no Content-Length") from None

    def put(self, url: str, fileobj: IO[bytes], size: int, *, cookie: bool = True) -> None:
        """Upload ``size`` bytes from ``fileobj`` (streamed; retried if it can be rewound)."""
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self.request(
            "PUT", url, headers=headers, body=fileobj, cookie=cookie,
            idempotent=hasattr(fileobj, "seek"), what=f"upload {url.split('?')[0]}",
        )

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
