"""Sessions with vCenter or a standalone ESXi: verified TLS, typed errors, transparent re-login.

:func:`connect` returns a :class:`Session`.  Every vSphere call the library makes goes through
:meth:`Session.call`, which

* re-logs in **once** and retries when the server answers ``vim.fault.NotAuthenticated``.  That
  fault means the server refused the call before running it, so the retry is safe for *every*
  call, task-starting ones included;
* retries network drops (socket/HTTP errors) only when the caller says the call is
  ``idempotent`` (property reads, ``RetrieveContents``, ``QueryChangedDiskAreas``, guest process
  listing), paced by :data:`vmkeep.retry.SOAP_DROP_RETRY`.  A dropped ``CreateSnapshot_Task``
  may have run; it is never retried blindly and surfaces as a transient :class:`ConnectionFailed`
  instead;
* translates every other fault to a :class:`~vmkeep.vsphere.errors.VSphereError` raised
  ``from None`` (no SOAP request, no password in tracebacks).

Managed object references stay valid across a re-login (same stub, new cookie).  A session may
be shared by threads; the re-login is serialised.  ``start_keepalive`` pings the session manager
in a daemon thread so that long reads between API calls do not let the session idle out.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any, TypeVar

from vmkeep.errors import UsageError
from vmkeep.retry import SOAP_DROP_RETRY, RetryPolicy
from vmkeep.urls import split_url
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import (
    NETWORK_ERRORS,
    AuthenticationFailed,
    ConnectionFailed,
    SessionExpired,
    VSphereError,
    is_not_authenticated,
    translate,
)
from vmkeep.vsphere.names import vm_name
from vmkeep.vsphere.tls import TLSOptions, build_ssl_context

log = logging.getLogger(__name__)

T = TypeVar("T")
COOKIE_NAME = "vmware_soap_session"


def parse_endpoint(url: str, default_port: int = 443) -> tuple[str, int]:
    """``"vc.example"``, ``"vc:8443"``, ``"https://127.0.0.1:8989/sdk"`` → (host, port).
    A :class:`~vmkeep.errors.UsageError` (exit 2) names what is wrong with any other: no host,
    a port that is not one, a scheme vSphere does not speak (``ftp://``), a password in it."""
    if "://" not in url:
        url = "https://" + url
    form = "[https://]HOST[:PORT][/sdk]"
    parts, port = split_url(url, "the vSphere endpoint", form)
    if parts.scheme.lower() not in ("https", "http"):
        raise UsageError(f"vSphere endpoint {url!r}: vSphere speaks HTTPS, not {parts.scheme}: "
                         f"write it {form}")
    if parts.password is not None:  # (the URL is not echoed: it holds the password)
        raise UsageError("the vSphere endpoint holds a password, which would be recorded and "
                         "shown; give it in VMKEEP_VC_PASSWORD(_FILE) instead")
    if not parts.hostname:
        raise UsageError(f"no host in vSphere endpoint {url!r}: write it {form}")
    return parts.hostname, port or default_port


class Session:
    """A logged-in pyVmomi connection with re-login; see the module docstring for the rules."""

    def __init__(
        self,
        stub: Any,
        host: str,
        port: int,
        credentials: Credentials,
        tls: TLSOptions,
        ssl_context: Any,
        *,
        network_retries: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        from pyVmomi import vim

        self.stub = stub
        self.host = host
        self.port = port
        self.tls = tls
        self.ssl_context = ssl_context
        self._credentials = credentials
        self._lock = threading.Lock()
        self._generation = 0
        self._naming = False  # naming the object of a NoPermission (no recursion)
        self._drop_retry = RetryPolicy(
            retries=network_retries, delay_s=retry_delay, backoff=SOAP_DROP_RETRY.backoff,
            cap_s=SOAP_DROP_RETRY.cap_s,
        )
        self._keepalive: threading.Thread | None = None
        self._stop = threading.Event()
        self.si = vim.ServiceInstance("ServiceInstance", stub)
        self.content: Any = self.call(
            self.si.RetrieveContent, idempotent=True, what="RetrieveContent"
        )

    # -- login ----------------------------------------------------------------------------------
    def login(self) -> None:
        """Log in (again) with the stored credentials; typed errors only, never the password."""
        from pyVmomi import vim

        user = self._credentials.user
        try:
            self.content.sessionManager.Login(user, self._credentials.reveal(), None)
        except vim.fault.InvalidLogin:
            raise AuthenticationFailed(user) from None
        except Exception as exc:  # pyVmomi raises faults and socket errors alike
            raise translate(exc, "login", f"{self.host}:{self.port}") from None
        self._generation += 1
        log.info("logged in to %s:%s as %s", self.host, self.port, user)

    def relogin(self, seen_generation: int | None = None) -> None:
        """Re-login unless another thread already did since ``seen_generation``."""
        with self._lock:
            if seen_generation is not None and seen_generation != self._generation:
                return
            try:
                self.login()
            except AuthenticationFailed:
                raise
            except VSphereError as exc:
                raise SessionExpired(exc.get_message()) from None

    # -- calls ----------------------------------------------------------------------------------
    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        idempotent: bool = False,
        what: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` under the re-login/retry/translation rules above."""
        label: str = what or str(getattr(fn, "__name__", "vSphere call"))
        relogged = False
        drops = 0
        while True:
            generation = self._generation
            try:
                return fn(*args, **kwargs)
            except VSphereError:
                raise
            except Exception as exc:
                if is_not_authenticated(exc) and not relogged:
                    log.warning("vSphere session expired during %s; logging in again", label)
                    relogged = True
                    self.relogin(generation)
                    continue
                dropped = isinstance(exc, NETWORK_ERRORS)
                if dropped and idempotent and drops < self._drop_retry.retries:
                    drops += 1
                    log.warning("connection dropped during %s; retry %d", label, drops)
                    self.stub.DropConnections()
                    time.sleep(self._drop_retry.delay(drops))
                    continue
                err = translate(exc, label, f"{self.host}:{self.port}", self._name_or_none)
            raise err from None

    def _name_or_none(self, obj: Any) -> str | None:
        """``obj``'s name for an error message, or ``None`` (never raises; not while naming)."""
        if self._naming:
            return None
        self._naming = True
        try:
            return str(self.get(obj, "name"))
        except Exception:
            return None
        finally:
            self._naming = False

    def props(self, obj: Any, paths: list[str]) -> dict[str, Any]:
        """Read properties (dotted paths allowed) of one managed object in one collector call.

        Unset properties are absent from the result; a VM's ``name`` is its plain name
        (:mod:`vmkeep.vsphere.names`).  Idempotent; re-login on expiry.  We avoid
        pyVmomi's attribute accessors for optional properties: they use ``Fetch``, which some
        servers (vcsim) cannot answer for unset values.
        """
        from pyVmomi import vim, vmodl

        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=obj)],
            propSet=[pc.PropertySpec(type=type(obj), pathSet=paths)],
        )
        collector = self.content.propertyCollector
        found = self.call(
            collector.RetrieveContents, [spec], idempotent=True, what="read properties"
        )
        out = {p.name: p.val for o in found or [] for p in o.propSet}
        if "name" in out and isinstance(obj, vim.VirtualMachine):
            out["name"] = vm_name(str(out["name"]))  # the plain name (vsphere.names)
        return out

    def get(self, obj: Any, path: str) -> Any:
        """One property of a managed object, ``None`` when unset (see :meth:`props`)."""
        return self.props(obj, [path]).get(path)

    # -- keep-alive -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Check the session is alive; re-login if the server forgot it."""
        current = self.call(
            getattr, self.content.sessionManager, "currentSession", idempotent=True, what="ping"
        )
        if current is None:
            log.warning("vSphere session gone; logging in again")
            self.relogin()

    def start_keepalive(self, interval: float = 300.0) -> None:
        """Ping every ``interval`` seconds in a daemon thread until :meth:`close`."""
        if self._keepalive is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.ping()
                except VSphereError as exc:
                    log.warning("vSphere keep-alive failed: %s", exc)

        self._keepalive = threading.Thread(target=loop, name="vsphere-keepalive", daemon=True)
        self._keepalive.start()

    # -- HTTP helpers ---------------------------------------------------------------------------
    @property
    def cookie(self) -> str:
        """``Cookie`` header value carrying the SOAP session, for datastore/guest HTTP calls."""
        raw = getattr(self.stub, "cookie", "") or ""
        morsel = SimpleCookie(raw).get(COOKIE_NAME) if raw else None
        if morsel is None:
            raise SessionExpired("no session cookie")
        return f"{COOKIE_NAME}={morsel.coded_value}"

    def is_logged_in(self) -> bool:
        """True when the server still knows this session (``currentSession`` is set)."""
        try:
            return self.content.sessionManager.currentSession is not None
        except Exception:  # an expired session or a dropped connection: not logged in
            return False

    def basic_authorization(self) -> str:
        """``Authorization`` header value for a vAPI session login (the vAPI REST services,
        e.g. tagging, take user and password, not the SOAP session); never logged."""
        raw = f"{self._credentials.user}:{self._credentials.reveal()}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @property
    def user(self) -> str:
        """The user name this session logs in as."""
        return self._credentials.user

    @property
    def generation(self) -> int:
        """Incremented on every login; HTTP clients re-read :attr:`cookie` when it changes."""
        return self._generation

    @property
    def is_vcenter(self) -> bool:
        return bool(self.content.about.apiType == "VirtualCenter")

    def close(self) -> None:
        """Stop the keep-alive and log out (errors ignored: the session ends anyway)."""
        self._stop.set()
        with contextlib.suppress(Exception):  # logging out of a dead session is not an error
            self.content.sessionManager.Logout()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.host}:{self.port}, user={self._credentials.user!r})"


def connect(
    endpoint: str,
    credentials: Credentials,
    tls: TLSOptions | None = None,
    *,
    timeout: float = 60.0,
    network_retries: int = 3,
    retry_delay: float = 1.0,
) -> Session:
    """Connect and log in to ``endpoint`` (vCenter or ESXi; URL or ``host[:port]``).

    TLS is verified per ``tls`` (default: system CAs with host name check), localhost included.
    Raises :class:`TLSVerificationFailed`, :class:`ConnectionFailed` (transient) or
    :class:`AuthenticationFailed`.
    """
    from pyVim import connect as pyvim_connect

    tls = tls or TLSOptions()
    host, port = parse_endpoint(endpoint)
    ctx = build_ssl_context(tls)
    where = f"{host}:{port}"
    try:
        stub = pyvim_connect.SmartStubAdapter(
            host=host,
            port=port,
            sslContext=ctx,
            disableSslCertValidation=False,
            httpConnectionTimeout=timeout,
        )
    except Exception as exc:
        raise _connect_error(exc, where) from None
    session = Session(
        stub, host, port, credentials, tls, ctx,
        network_retries=network_retries, retry_delay=retry_delay,
    )
    session.login()
    return session


def _connect_error(exc: Exception, where: str) -> VSphereError:
    err = translate(exc, where)
    if type(err) is VSphereError:  # "is down or is not a VIM server" and the like
        return ConnectionFailed(where, "no vSphere API answered")
    return err
