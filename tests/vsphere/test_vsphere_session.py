"""Session.call: one re-login on NotAuthenticated, drop retries only when idempotent, no leaks."""

from __future__ import annotations

import logging
import socket
import threading
import traceback
from typing import Any

import pytest
from pyVmomi import vim

from vmkeep.retry import RetryPolicy
from vmkeep.vsphere.connection import Session, parse_endpoint
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    SessionExpired,
    VSphereError,
    translate,
)
from vmkeep.vsphere.tls import TLSOptions

CANARY = "CANARY-session-pw-99"


class FakeSessionManager:
    def __init__(self, accept: bool = True) -> None:
        self.logins = 0
        self.accept = accept

    def Login(self, user: str, pwd: str, locale: Any) -> None:
        self.logins += 1
        if not self.accept:
            raise vim.fault.InvalidLogin(msg=f"login failed for {user} with {pwd}")


class FakeStub:
    cookie = 'vmware_soap_session="abc"; Path=/; HttpOnly'

    def __init__(self) -> None:
        self.drops = 0

    def DropConnections(self) -> None:
        self.drops += 1


def make_session(accept: bool = True) -> Session:
    s = object.__new__(Session)
    s.stub = FakeStub()
    s.host, s.port = "vc.example", 443
    s.tls = TLSOptions()
    s.ssl_context = None
    s._credentials = Credentials("admin", CANARY)
    s._lock = threading.Lock()
    s._generation = 0
    s._drop_retry = RetryPolicy(retries=2, delay_s=0.0)
    s._keepalive = None
    s._stop = threading.Event()
    s.content = type("C", (), {"sessionManager": FakeSessionManager(accept)})()
    return s


def test_parse_endpoint() -> None:
    assert parse_endpoint("vc.example") == ("vc.example", 443)
    assert parse_endpoint("https://127.0.0.1:8989/sdk") == ("127.0.0.1", 8989)
    assert parse_endpoint("esx1:9443") == ("esx1", 9443)
    assert parse_endpoint("https://[fd00::5]:8443/sdk") == ("fd00::5", 8443)


@pytest.mark.parametrize(("url", "says"), [
    ("https://", "no host"), ("https://:443", "no host"),
    ("vc:abc", "Port could not be cast"), ("vc:99999", "out of range"),
    ("[::1", "Invalid IPv6"), ("ftp://vc", "speaks HTTPS, not ftp"),
    ("https://admin:s3cret@vc", "holds a password"),
])
def test_a_bad_endpoint_is_a_usage_error_not_a_traceback(url: str, says: str) -> None:
    """``--vcenter vc:abc`` ended in a ``ValueError`` traceback; ``ftp://vc`` was read as
    HTTPS; a password in the URL was silently dropped.  Each is a usage error saying why (the
    one with a password without echoing it)."""
    from vmkeep.errors import UsageError

    with pytest.raises(UsageError, match=says) as err:
        parse_endpoint(url)
    assert err.value.exit_code == 2 and "s3cret" not in err.value.get_message()


def test_relogin_once_and_retry() -> None:
    s = make_session()
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise vim.fault.NotAuthenticated()
        return "done"

    assert s.call(flaky) == "done"
    assert s.content.sessionManager.logins == 1 and s.generation == 1


def test_second_not_authenticated_is_typed() -> None:
    s = make_session()

    def always() -> None:
        raise vim.fault.NotAuthenticated()

    with pytest.raises(SessionExpired) as info:
        s.call(always)
    assert info.value.is_transient
    assert s.content.sessionManager.logins == 1


def test_drops_retried_only_when_idempotent() -> None:
    s = make_session()
    attempts = []

    def dropping() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionResetError()
        return "ok"

    assert s.call(dropping, idempotent=True) == "ok"
    assert len(attempts) == 3
    attempts.clear()
    with pytest.raises(ConnectionFailed) as info:
        s.call(dropping)  # a task-starting call: never retried blindly
    assert len(attempts) == 1 and info.value.is_transient


def test_connection_error_names_the_endpoint_and_the_operation() -> None:
    """Issue 19: "Cannot reach vSphere endpoint read properties" named the operation."""
    s = make_session()

    def dropped() -> str:
        raise ConnectionResetError()

    with pytest.raises(ConnectionFailed) as info:
        s.call(dropped, what="read properties")
    message = info.value.get_message()
    assert message.startswith("Cannot reach vSphere endpoint vc.example:443:"), message
    assert "read properties" in message and "connection reset" in message


@pytest.mark.parametrize(("exc", "words"), [
    (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host name"),
    (ConnectionRefusedError(111, "refused"), "connection refused"),
    (TimeoutError(), "timed out"),
])
def test_a_network_failure_is_said_in_words(exc: BaseException, words: str) -> None:
    assert translate(exc, "vc.example:443").get_message() == (
        f"Cannot reach vSphere endpoint vc.example:443: {words}")


def test_bad_password_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    s = make_session(accept=False)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationFailed) as info:
        try:
            s.login()
        except AuthenticationFailed:
            text = traceback.format_exc()
            raise
    assert CANARY not in text and CANARY not in str(info.value) and CANARY not in repr(s)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert CANARY not in caplog.text
    assert info.value.exit_code == 16 and not info.value.is_transient


def test_relogin_failure_is_transient() -> None:
    s = make_session()

    def broken(*args: Any) -> None:
        raise TimeoutError()

    s.content.sessionManager.Login = broken
    with pytest.raises(SessionExpired):
        s.relogin()


def test_translate_keeps_only_name_and_msg() -> None:
    fault = vim.fault.FileFault(msg="cannot open", file=f"/vmfs/{CANARY}")
    err = translate(fault, "op")
    assert isinstance(err, VSphereError) and "FileFault" in str(err) and CANARY not in str(err)


def test_translate_keeps_the_faults_type_for_callers_to_branch_on() -> None:
    """Callers ask :func:`is_fault`, never the message (pyVmomi's class is
    ``vim.fault.DuplicateName``, the fault's WSDL name ``DuplicateName``)."""
    from vmkeep.vsphere.errors import is_fault

    err = translate(vim.fault.DuplicateName(msg="The name 'x' already exists.", name="x"), "op")
    assert err.fault_type == "DuplicateName" and is_fault(err, "InvalidName", "DuplicateName")
    assert not is_fault(translate(vim.fault.FileFault(msg="x"), "op"), "DuplicateName")
    # a message that merely mentions a fault is not that fault
    assert not is_fault(translate(vim.fault.FileFault(msg="DuplicateName"), "op"), "DuplicateName")
    assert translate(OSError("x"), "op").fault_type is None
    denied = translate(vim.fault.NoPermission(privilegeId="VirtualMachine.Inventory.Create"),
                       "op")
    assert is_fault(denied, "NoPermission") and type(denied).__name__ == "PermissionDenied"


def test_cookie_header() -> None:
    assert make_session().cookie == 'vmware_soap_session="abc"'


def test_ping_relogs_in_when_the_server_forgot_the_session() -> None:
    s = make_session()
    s.content.sessionManager.currentSession = None
    s.call = lambda fn, *a, **k: fn(*a)  # type: ignore[method-assign]
    s.ping()
    assert s.content.sessionManager.logins == 1
    s.content.sessionManager.currentSession = object()
    s.ping()
    assert s.content.sessionManager.logins == 1
