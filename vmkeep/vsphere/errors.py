"""Typed errors of the vSphere access library (exit code 16).

Every error raised out of :mod:`vmkeep.vsphere` is a :class:`VSphereError`; pyVmomi faults and
socket/TLS errors are translated at the boundary by :func:`translate` and re-raised ``from None``
so that neither the SOAP request (which may carry a password) nor pyVmomi's fault object reaches a
log or a traceback.  ``is_transient`` marks what a retry (Prefect task retry, or the session's
re-login) can fix: dropped connections, expired sessions, short datastore reads, timeouts.

The first docstring line is the message template (see :mod:`vmkeep.errors`).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from http.client import HTTPException
from typing import Any

from vmkeep.errors import VmkeepError, network_reason


class VSphereError(VmkeepError):
    """vSphere error: {}"""

    exit_code = 16
    #: the WSDL name of the vSphere fault this error translates (``DuplicateName``,
    #: ``FileAlreadyExists``…), set by :func:`translate` and for a failed task — what callers
    #: branch on (:func:`is_fault`), never the message; None when no fault is behind it
    fault_type: str | None = None


class ConnectionFailed(VSphereError):
    """Cannot reach vSphere endpoint {}: {}"""

    is_transient = True


class TLSVerificationFailed(VSphereError):
    """TLS verification of {} failed: {}"""


class AuthenticationFailed(VSphereError):
    """vSphere login as {!r} refused (wrong user name or password)."""


class SessionExpired(VSphereError):
    """vSphere session expired and re-login failed: {}"""

    is_transient = True


class NotFound(VSphereError):
    """Not found in vSphere inventory: {}"""


class AmbiguousVM(VSphereError):
    """{} VMs are named {!r} ({}): {}"""


class DatastoreNotMounted(VSphereError):
    """Datastore {} is not mounted on host {}{}: vSphere would refuse it (InaccessibleDatastore); nothing was changed.  Datastores that host mounts: {}"""  # noqa: E501


class CannotReplace(VSphereError):
    """{} cannot be replaced in place: vSphere reports it {} (it cannot mark, stop or rename it).  Restore it under another name (--name), or remove it from the inventory first"""  # noqa: E501


class TaskFailed(VSphereError):
    """vSphere task {} failed: {}"""

    fault: Any = None  # the server's fault object, for callers branching on its type


class PermissionDenied(VSphereError):
    """vSphere refused {}: the account lacks the privilege {} on {} (`vmkeep doctor` lists every missing privilege)."""  # noqa: E501


class LicenceRestricted(VSphereError):
    """vSphere refused {}: the host's licence prohibits it ({}); a free ESXi licence allows no API writes — snapshots, changed-block tracking and restores need a paid vSphere licence."""  # noqa: E501


class TaskTimeout(VSphereError):
    """vSphere task {} did not finish within {} s."""

    is_transient = True


class SnapshotFailed(VSphereError):
    """Snapshot {} of VM {} failed: {}"""


class QuiesceFailed(SnapshotFailed):
    """Quiesced snapshot {} of VM {} failed: {} (policy decides: fail or crash-consistent)"""


class EncryptedDiskUnreadable(VSphereError):
    """VM {} not backed up: {} is encrypted (vSphere VM Encryption) and would be read {}, where it is ciphertext (its datastore files) or nothing (vSphere exports no encrypted VM).  Back it up with --transport hotadd from a data-mover VM that is encrypted itself (the host decrypts the disks it hot-adds there), or its files from inside the guest (`vmkeep backup files`)."""  # noqa: E501


class VirtualRdmUnreadable(VSphereError):
    """VM {} not backed up: {} is a virtual-mode RDM and would be read {}, which reads files on the datastore; its base is a SAN LUN behind a mapping file, not such a file.  Back it up with --transport auto, nfc or hotadd (the host reads the LUN), or leave it out with --exclude-disk."""  # noqa: E501


class DatastoreSpaceLow(VSphereError):
    """VM {} skipped, no snapshot taken: {}"""


class NotEnoughSpace(VSphereError):
    """{} needs {} on datastore {}, which has {} free: nothing was created ({})"""


class SnapshotRemoveFailed(VSphereError):
    """Removing snapshot {} of VM {} failed: {}"""

    is_transient = True


class ChangeTrackingError(VSphereError):
    """Changed-block tracking unusable for disk {}: {}"""


class DatastoreIOError(VSphereError):
    """Datastore transfer of {} failed: {}"""

    is_transient = True


class FileLocked(DatastoreIOError):
    """Datastore file {} is open for writing by the host running the VM: {}"""

    is_transient = False


class RangeIgnored(DatastoreIOError):
    """Datastore read {} refused: {}"""

    is_transient = False


class HostUnreachable(DatastoreIOError):
    """ESXi host {} unreachable: {}"""


class DiskBusy(VSphereError):
    """Refusing to read {}: {}"""


class UnsupportedDisk(VSphereError):
    """Disk {} cannot be read by this transport: {}"""


class ObjectBackedDisk(UnsupportedDisk):
    """Disk {} is a {} object without a flat file: back it up with --transport nfc or auto"""


class NfcError(VSphereError):
    """NFC export of {} failed: {}"""


class NfcLeaseError(NfcError):
    """NFC export lease for {} ended: {}"""


class GuestOperationFailed(VSphereError):
    """Guest operation {} in VM {} failed: {}"""


class GuestToolsUnavailable(GuestOperationFailed):
    """Guest operation {} in VM {} unavailable: {}"""

    is_transient = True


class GuestProgramFailed(GuestOperationFailed):
    """Guest program {} in VM {} exited with code {}"""


class GuestTimeout(GuestOperationFailed):
    """Guest program {} in VM {} still running after {} s"""

    is_transient = True


class TransportRefused(VSphereError):
    """Restore transport refused: {}"""


class VMExists(VSphereError):
    """A VM named {!r} already exists (choose another --name{})."""

    def __init__(self, name: str, replaceable: bool = False) -> None:
        super().__init__(name, ", or --overwrite to replace it" if replaceable else "")


NETWORK_ERRORS = (socket.error, HTTPException, ConnectionError, TimeoutError)


def is_fault(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` (a :class:`VSphereError`) translates a vSphere fault called one of
    ``names`` (WSDL names: ``DuplicateName``)."""
    return getattr(exc, "fault_type", None) in names


def wsdl_fault_type(fault: Any) -> str | None:
    """The WSDL name of a pyVmomi fault object (``DuplicateName``; its Python class is
    ``vim.fault.DuplicateName``), or None for anything else."""
    name = getattr(fault, "_wsdlName", None)
    return name if isinstance(name, str) and name else None


def fault_name(exc: BaseException) -> str:
    """A short, secret-free description of a pyVmomi fault or OS error."""
    name = type(exc).__name__
    msg = getattr(exc, "msg", None)
    if isinstance(msg, str) and msg:
        return f"{name}: {msg}"
    return name


def is_not_authenticated(exc: BaseException) -> bool:
    """True for the fault vCenter/ESXi raise when the session cookie is no longer valid."""
    from pyVmomi import vim

    return isinstance(exc, vim.fault.NotAuthenticated)


def is_licence_restricted(exc: BaseException) -> bool:
    """True for the fault a host raises when its licence forbids the call (free ESXi: any API
    write)."""
    from pyVmomi import vim

    return isinstance(exc, vim.fault.RestrictedVersion)


def translate(
    exc: BaseException, what: str, endpoint: str | None = None,
    name_of: Callable[[Any], str | None] | None = None,
) -> VSphereError:
    """Map ``exc`` raised while doing ``what`` to a typed error (raise it ``from None``).

    ``endpoint`` (``host:port``) is named in connection and TLS errors; without it ``what`` is
    taken to be the endpoint (the connect path passes ``host:port`` as ``what``).  ``name_of``
    names the object of a NoPermission (``Network 'VM Network' (network-133)`` instead of the
    bare moref); it must not raise.
    Only the fault's class name and its ``msg`` field are kept; never the request, arguments or
    the original object (pyVmomi faults may reference the call's parameters).
    """
    if isinstance(exc, VSphereError):
        return exc
    translated = _translate(exc, what, endpoint, name_of)
    translated.fault_type = wsdl_fault_type(exc)
    return translated


def _translate(
    exc: BaseException, what: str, endpoint: str | None,
    name_of: Callable[[Any], str | None] | None,
) -> VSphereError:
    where = endpoint or what
    during = f" (during {what})" if endpoint else ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSVerificationFailed(where, (exc.verify_message or "certificate rejected") + during)
    if isinstance(exc, ssl.SSLError):
        return TLSVerificationFailed(where, type(exc).__name__ + during)
    if isinstance(exc, NETWORK_ERRORS):
        return ConnectionFailed(where, (network_reason(exc) or type(exc).__name__) + during)
    if is_not_authenticated(exc):
        return SessionExpired(what)
    if is_licence_restricted(exc):
        return LicenceRestricted(what, getattr(exc, "msg", None) or "RestrictedVersion")
    privilege = getattr(exc, "privilegeId", None)
    if isinstance(privilege, str) and privilege:  # vim.fault.NoPermission
        obj = getattr(exc, "object", None)
        moid = getattr(obj, "_moId", None)
        name = name_of(obj) if name_of is not None and moid else None
        kind = getattr(obj, "_wsdlName", None) or "object"
        return PermissionDenied(what, privilege, f"{kind} {name!r} ({moid})" if name else
                                moid or "the object")
    return VSphereError(f"{what}: {fault_name(exc)}")
