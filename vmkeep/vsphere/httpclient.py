"""HTTPS to the vSphere endpoint outside SOAP: datastore ``/folder`` files and guest transfers.

One :class:`HTTPClient` per session; each thread gets its own keep-alive connection (several
ranges can be in flight from a thread pool).  The session's TLS context is reused, so the same
CA / pinned thumbprint / insecure choice applies; the SOAP session cookie
(``vmware_soap_session``) authenticates datastore access.

Retries: ``GET`` (``get_range``, ``head_size``) is idempotent and retried on dropped connections,
5xx answers and short bodies (``retries`` times, backing off), then raises a transient
:class:`DatastoreIOError`.  A 401/403 triggers one re-login and retry, unless the session is
still logged in: a 403 then is a missing privilege (:class:`PermissionDenied`,
``Datastore.Browse``).  ``PUT`` is retried only when the body is seekable (it is rewound), since
the datastore file is simply overwritten.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import (
    NETWORK_ERRORS,
    DatastoreIOError,
    NotFound,
    PermissionDenied,
    VSphereError,
)

log = logging.getLogger(__name__)


def folder_url(datacenter: str, datastore: str, path: str) -> str:
    """``/folder/<path>?dcPath=<dc>&dsName=<ds>`` (path segments quoted)."""
    query = urlencode({"dcPath": datacenter, "dsName": datastore})
    return f"/folder/{quote(path.lstrip('/'), safe='/')}?{query}"


class _Retry(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class HTTPClient:
    """Thread-safe HTTPS client bound to a :class:`Session` (see module docstring)."""

    def __init__(
        self, session: Session, *, timeout: float = 120.0, retries: int = 4, backoff: float = 0.5
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._local = threading.local()

    # -- connections ----------------------------------------------------------------------------
    def _conn(self, host: str, port: int) -> http.client.HTTPSConnection:
        conns: dict[tuple[str, int], http.client.HTTPSConnection] = getattr(
            self._local, "conns", None
        ) or {}
        self._local.conns = conns
        conn = conns.get((host, port))
        if conn is None:
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=self.session.ssl_context
            )
            conns[(host, port)] = conn
        return conn

    def _drop(self, host: str, port: int) -> None:
        conns = getattr(self._local, "conns", {})
        conn = conns.pop((host, port), None)
        if conn is not None:
            conn.close()

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
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request, return ``(status, headers, body)``; retry rules in the module doc."""
        host, port, path = self._target(url)
        label = what or f"{method} {path.split('?')[0]}"
        relogged = False
        attempt = 0
        sent = False
        while True:
            generation = self.session.generation
            hdrs = dict(headers or {})
            if cookie:
                hdrs["Cookie"] = self.session.cookie
            if sent and body is not None and not isinstance(body, bytes | bytearray):
                if not hasattr(body, "seek"):
                    raise DatastoreIOError(label, "cannot resend a streamed body")
                body.seek(0)
            sent = True
            try:
                conn = self._conn(host, port)
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                resp_headers = {k.lower(): v for k, v in resp.getheaders()}
                if status == 403 and cookie and self.session.is_logged_in():
                    # A live session refused: a missing privilege, not an expiry.
                    raise PermissionDenied(f"{label} {path.split('?')[0]}", "Datastore.Browse",
                                           "its datastore")
                if status in (401, 403) and cookie and not relogged:
                    relogged = True
                    self.session.relogin(generation)
                    continue
                if status == 404:
                    raise NotFound(f"{label}: HTTP 404")
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
            except (_Retry, *NETWORK_ERRORS) as exc:
                self._drop(host, port)
                why = exc.why if isinstance(exc, _Retry) else type(exc).__name__
                if attempt >= self.retries or not idempotent:
                    raise DatastoreIOError(label, why) from None
                attempt += 1
                log.warning("%s: %s; retry %d", label, why, attempt)
                time.sleep(self.backoff * attempt)

    # -- datastore helpers ----------------------------------------------------------------------
    def get_range(self, url: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (Range GET; short bodies are retried)."""
        if length <= 0:
            return b""
        hdr = {"Range": f"bytes={offset}-{offset + length - 1}"}
        status, _, data = self.request(
            "GET", url, headers=hdr, expect_length=None, what=f"read {offset}+{length}"
        )
        if status == 200:  # server ignored the Range header
            data = data[offset : offset + length]
        if len(data) != length:
            # one more honest try through the retry loop
            _, _, data = self.request(
                "GET", url, headers=hdr, ok=(206,), expect_length=length,
                what=f"read {offset}+{length}",
            )
        return data

    def head_size(self, url: str) -> int:
        _, headers, _ = self.request("HEAD", url, what="HEAD")
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
        for conn in getattr(self._local, "conns", {}).values():
            conn.close()
        self._local.conns = {}
