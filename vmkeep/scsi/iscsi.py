"""A ctypes binding to libiscsi (Debian ``libiscsi7``): a user-space iSCSI initiator.

Why not a PyPI package: ``pyscsi``'s SG_IO backend builds its CHECK CONDITION exception and never
raises it, and ``cython-iscsi`` leaks every task, returns no sense data and reports a dead target
as success.  This binding is small and checks everything:

* every libiscsi return value is checked (NULL contexts, non-zero connects, NULL tasks);
* auto-reconnect is *off*: libiscsi would otherwise silently reconnect and replay commands,
  hiding a target that died mid-write; a lost connection is a :class:`TransportError`;
* every command runs under its timeout (``iscsi_set_timeout``, seconds; set on the context
  when it differs from the previous command's);
* data-out is sent from the caller's buffer (no copy; :class:`_Borrowed`);
* each ``scsi_task`` is freed in ``finally``;
* on CHECK CONDITION libiscsi keeps the sense segment (2-byte length + sense bytes) in
  ``task->datain``; it is decoded by :mod:`vmkeep.scsi.sense` (libiscsi's own parsed sense drops
  the FM/EOM/ILI bits tape needs).

Commands run through the synchronous API (it runs libiscsi's event loop for one command; the
GIL is released during the call), except :meth:`IscsiTransport.submit`: the asynchronous API,
so that a tape writer keeps a second WRITE queued while the target works on the first
(``iscsi_scsi_command_async``; completions are collected by :meth:`Pending.result`, which polls
the session's socket and runs ``iscsi_service`` — both release the GIL — under the command's
own deadline, enforced here as well as by libiscsi). The helpers that only build or free a task
in memory, or only queue a command or ask which events to poll for (``scsi_create_task``,
``scsi_free_scsi_task``, ``iscsi_scsi_command_async``, ``iscsi_get_fd``,
``iscsi_which_events``) are called **keeping the GIL** (through a ``ctypes.PyDLL`` handle of
the same library): each release is a chance for another thread to take the GIL and hold it
until its next blocking call or the switch interval (5 ms), which a drive's writer thread pays
per block while the copy job's reader and producer threads run — one hand-over per command
instead of three. One context per logical unit; not thread-safe (see transport.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import select
import socket
import threading
import time
from functools import cache
from urllib.parse import urlsplit

from vmkeep.errors import UsageError, network_reason
from vmkeep.scsi.errors import DeviceNotFound, LoginFailed, TransportError, check_condition
from vmkeep.scsi.sense import decode_sense
from vmkeep.scsi.transport import SHORT_TIMEOUT
from vmkeep.urls import split_url

STATUS_GOOD, STATUS_CHECK_CONDITION = 0, 2
STATUS_NAMES = {
    0x08: "BUSY", 0x18: "RESERVATION CONFLICT", 0x28: "TASK SET FULL", 0x30: "ACA ACTIVE",
    0x40: "TASK ABORTED", 0x0F000000: "cancelled", 0x0F000001: "error", 0x0F000002: "timeout",
}
XFER_NONE, XFER_READ, XFER_WRITE = 0, 1, 2
SESSION_NORMAL, DIGEST_NONE = 2, 0
RESIDUAL_UNDERFLOW = 1
INITIATOR = "iqn.2026-12.org.vmkeep:initiator"


class _Sense(ctypes.Structure):
    _fields_ = [
        ("error_type", ctypes.c_ubyte),
        ("key", ctypes.c_int),
        ("ascq", ctypes.c_int),
        # three 1-bit fields, bit_pointer and field_pointer: GCC packs them into 4 bytes
        ("_rest", ctypes.c_ubyte * 4),
    ]


class _Data(ctypes.Structure):
    _fields_ = [("size", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte))]


class _Task(ctypes.Structure):
    """``struct scsi_task`` up to the fields read here (libiscsi 1.19 layout)."""

    _fields_ = [
        ("status", ctypes.c_int),
        ("cdb_size", ctypes.c_int),
        ("xfer_dir", ctypes.c_int),
        ("expxferlen", ctypes.c_int),
        ("cdb", ctypes.c_ubyte * 16),
        ("residual_status", ctypes.c_int),
        ("residual", ctypes.c_size_t),
        ("sense", _Sense),
        ("datain", _Data),
    ]


class _IscsiData(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("data", ctypes.c_void_p)]


#: ``void cb(struct iscsi_context *, int status, void *command_data, void *private_data)``
_COMMAND_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_void_p)

#: Functions that never block (no I/O, no event loop): called without releasing the GIL.
_KEEP_GIL = ("scsi_create_task", "scsi_free_scsi_task", "iscsi_scsi_command_async",
             "iscsi_get_fd", "iscsi_which_events")


@cache
def library() -> ctypes.CDLL:
    """Load libiscsi once and declare the functions used (DeviceNotFound when absent).  The
    functions of :data:`_KEEP_GIL` are bound through a ``PyDLL`` handle (the GIL is kept)."""
    name = ctypes.util.find_library("iscsi") or "libiscsi.so.7"
    try:
        lib = ctypes.CDLL(name)
        keep_gil = ctypes.PyDLL(name)
    except OSError as exc:
        raise DeviceNotFound(f"libiscsi (Debian package libiscsi7): {exc}") from None
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sig = {
        "iscsi_create_context": ([cp], vp),
        "iscsi_destroy_context": ([vp], ci),
        "iscsi_set_targetname": ([vp, cp], ci),
        "iscsi_set_session_type": ([vp, ci], ci),
        "iscsi_set_header_digest": ([vp, ci], ci),
        "iscsi_set_timeout": ([vp, ci], ci),
        "iscsi_set_noautoreconnect": ([vp, ci], None),
        "iscsi_set_reconnect_max_retries": ([vp, ci], None),
        "iscsi_full_connect_sync": ([vp, cp, ci], ci),
        "iscsi_logout_sync": ([vp], ci),
        "iscsi_get_error": ([vp], cp),
        "scsi_create_task": ([ci, ctypes.POINTER(ctypes.c_ubyte), ci, ci], ctypes.POINTER(_Task)),
        "scsi_free_scsi_task": ([ctypes.POINTER(_Task)], None),
        "iscsi_scsi_command_sync": (
            [vp, ci, ctypes.POINTER(_Task), ctypes.POINTER(_IscsiData)],
            ctypes.POINTER(_Task),
        ),
        "iscsi_scsi_command_async": (
            [vp, ci, ctypes.POINTER(_Task), _COMMAND_CB, ctypes.POINTER(_IscsiData), vp], ci,
        ),
        "iscsi_get_fd": ([vp], ci),
        "iscsi_which_events": ([vp], ci),
        "iscsi_service": ([vp, ci], ci),
    }
    for fname, (args, res) in sig.items():
        fn = getattr(keep_gil if fname in _KEEP_GIL else lib, fname)
        fn.argtypes, fn.restype = args, res
        setattr(lib, fname, fn)
    return lib


def parse_url(url: str) -> tuple[str, str, int]:
    """``iscsi://host[:port]/iqn/lun`` → (portal, iqn, lun)."""
    form = "iscsi://host[:port]/iqn/lun"
    parts, port = split_url(url, f"the iSCSI URL {url!r}", form)
    path = parts.path.strip("/").split("/")
    if parts.scheme != "iscsi" or not parts.hostname or len(path) != 2 or not path[1].isdigit():
        raise UsageError(f"bad iSCSI URL {url!r}: want {form}")
    portal = f"{parts.hostname}:{port or 3260}"
    return portal, path[0], int(path[1])


class IscsiTransport:
    """One logged-in session to one LUN.  Raises TransportError when login fails."""

    def __init__(self, url: str, timeout: float = SHORT_TIMEOUT) -> None:
        self.url = url
        self.portal, self.iqn, self.lun = parse_url(url)
        self._lib = library()
        self._lock = threading.Lock()
        self._timeout = 0  # the command timeout last set in libiscsi (0: not yet)
        self._done: set[int] = set()  # serials of asynchronous commands completed
        self._serial = 0
        self._cb = _COMMAND_CB(self._completed)  # kept alive as long as the context
        self._poller = select.poll()
        self._polled: int | None = None  # the fd registered with the poller
        ctx = self._lib.iscsi_create_context(f"{INITIATOR}:{os.getpid()}".encode())
        if not ctx:
            raise TransportError(url, "iscsi_create_context failed")
        self._ctx: int | None = ctx
        try:
            self._setup(timeout)
        except BaseException:
            self._lib.iscsi_destroy_context(ctx)
            self._ctx = None
            raise

    def _error(self) -> str:
        if not self._ctx:
            return "closed"
        msg = self._lib.iscsi_get_error(self._ctx)
        return msg.decode(errors="replace") if msg else "unknown libiscsi error"

    def _setup(self, timeout: float) -> None:
        lib, ctx = self._lib, self._ctx
        for name, rc in (
            ("targetname", lib.iscsi_set_targetname(ctx, self.iqn.encode())),
            ("session type", lib.iscsi_set_session_type(ctx, SESSION_NORMAL)),
            ("header digest", lib.iscsi_set_header_digest(ctx, DIGEST_NONE)),
            ("timeout", lib.iscsi_set_timeout(ctx, _seconds(timeout))),
        ):
            if rc != 0:
                raise TransportError(self.url, f"setting {name}: {self._error()}")
        lib.iscsi_set_noautoreconnect(ctx, 1)
        lib.iscsi_set_reconnect_max_retries(ctx, 0)
        if lib.iscsi_full_connect_sync(ctx, self.portal.encode(), self.lun) != 0:
            raise LoginFailed(self.url, self._login_failure())

    def _login_failure(self) -> str:
        """Why the login failed, in words a user can act on: libiscsi reports a portal that
        refuses connections as "iscsi_service_reconnect_if_loggedin. Can not reconnect right
        now", so the portal is tried with a plain TCP connection first (refused, unreachable,
        timed out); if it answers, libiscsi's own message (a wrong IQN or LUN, a refused
        login) is the reason."""
        said = " ".join(self._error().split())
        parts = urlsplit(self.url)
        where = f"{parts.hostname}:{parts.port or 3260}"
        try:
            with socket.create_connection((parts.hostname or "", parts.port or 3260), timeout=5):
                pass
        except OSError as exc:
            return f"cannot connect to {where}: {network_reason(exc) or exc.strerror or exc}"
        return f"login to {where} failed: {said}"

    def execute(
        self,
        cdb: bytes,
        data_out: bytes | memoryview | None = None,
        data_in_len: int = 0,
        timeout: float = SHORT_TIMEOUT,
    ) -> tuple[bytes, int]:
        if data_out is not None and data_in_len:
            raise ValueError("data_out and data_in_len are exclusive")
        with self._lock:
            if not self._ctx:
                raise TransportError(self.url, "session closed after an earlier failure")
            return self._execute(bytes(cdb), data_out, data_in_len, timeout)

    def _execute(
        self, cdb: bytes, data_out: bytes | memoryview | None, data_in_len: int, timeout: float
    ) -> tuple[bytes, int]:
        lib, ctx = self._lib, self._ctx
        if data_out is not None:
            xfer, length = XFER_WRITE, len(data_out)
        elif data_in_len:
            xfer, length = XFER_READ, data_in_len
        else:
            xfer, length = XFER_NONE, 0
        task, what, _ = self._new_task(cdb, xfer, length, timeout)
        try:
            out_ref = None
            keep: _Borrowed | None = None
            if data_out is not None:
                keep = _Borrowed(data_out)  # the caller's bytes, not a copy
                out_ref = ctypes.byref(_IscsiData(length, keep.address))
            try:
                done = lib.iscsi_scsi_command_sync(ctx, self.lun, task, out_ref)
            finally:
                if keep is not None:
                    keep.release()
            if not done:
                msg = self._error()
                self._fail()
                raise TransportError(what, msg)
            return self._outcome(task, xfer, length, what)
        finally:
            lib.scsi_free_scsi_task(task)

    def _new_task(
        self, cdb: bytes, xfer: int, length: int, timeout: float
    ) -> tuple[ctypes._Pointer[_Task], str, int]:
        """(task, description for errors, timeout in whole seconds) of a command about to be
        sent; the session's timeout is set first when it differs from the last command's (one
        call fewer per block while streaming).  The caller frees the task."""
        lib, ctx = self._lib, self._ctx
        what = f"{self.url} opcode {cdb[0]:02x}h"
        seconds = _seconds(timeout)
        if seconds != self._timeout:
            if lib.iscsi_set_timeout(ctx, seconds) != 0:
                raise TransportError(what, f"setting timeout: {self._error()}")
            self._timeout = seconds
        cdb_buf = (ctypes.c_ubyte * len(cdb)).from_buffer_copy(cdb)
        task = lib.scsi_create_task(len(cdb), cdb_buf, xfer, length)
        if not task:
            raise TransportError(what, "scsi_create_task failed (out of memory)")
        return task, what, seconds

    def _outcome(
        self, task: ctypes._Pointer[_Task], xfer: int, length: int, what: str
    ) -> tuple[bytes, int]:
        """The result of a completed task (see transport.py), or its typed error."""
        t = task.contents
        residual = int(t.residual) if t.residual_status == RESIDUAL_UNDERFLOW else 0
        if t.status == STATUS_GOOD:
            data = b""
            if xfer == XFER_READ and t.datain.data and t.datain.size > 0:
                data = ctypes.string_at(t.datain.data, min(t.datain.size, length))
            return data, residual
        if t.status == STATUS_CHECK_CONDITION:
            raw = b""
            if t.datain.data and t.datain.size > 2:
                seg = ctypes.string_at(t.datain.data, t.datain.size)
                raw = seg[2 : 2 + int.from_bytes(seg[:2], "big")]
            err = check_condition(what, decode_sense(raw), residual)
            err.data = b""  # type: ignore[attr-defined]
            raise err
        status = STATUS_NAMES.get(t.status, f"status {t.status:#x}")
        msg = f"{status}: {self._error()}"
        if t.status >= 0x0F000000:
            self._fail()
        raise TransportError(what, msg)

    def submit(
        self, cdb: bytes, data_out: bytes | memoryview, timeout: float = SHORT_TIMEOUT
    ) -> Pending:
        """Send a command with a data-out phase without waiting for it (see the module
        docstring); :meth:`Pending.result` gives what :meth:`execute` would have returned or
        raised.  ``data_out`` stays pinned (not copied) until then.  Commands complete in the
        order the target answers them; every ``Pending`` must be collected (``result``), also
        after an error, which frees its task."""
        with self._lock:
            if not self._ctx:
                raise TransportError(self.url, "session closed after an earlier failure")
            lib, ctx = self._lib, self._ctx
            length = len(data_out)
            task, what, seconds = self._new_task(cdb, XFER_WRITE, length, timeout)
            self._serial += 1
            pending = Pending(self, self._serial, task, _Borrowed(data_out), length, what,
                              time.monotonic() + seconds)
            if lib.iscsi_scsi_command_async(ctx, self.lun, task, self._cb,
                                            ctypes.byref(pending.out), pending.serial) != 0:
                msg = self._error()
                pending.free()
                self._fail()
                raise TransportError(what, f"sending: {msg}")
            return pending

    def collect(self, pending: Pending) -> tuple[bytes, int]:
        """Wait for a submitted command; what :meth:`execute` returns or raises.  If the wait
        ends without the command's answer (an error, an interrupt), the session is destroyed
        before the task is freed: libiscsi must not keep a freed task queued."""
        try:
            with self._lock:
                self._wait(pending)
                return self._outcome(pending.task, XFER_WRITE, pending.length, pending.what)
        finally:
            if not pending.completed and self._ctx:
                self._fail()
            pending.free()

    def _completed(self, _ctx: int | None, _status: int, _task: int | None,
                   serial: int | None) -> None:
        """libiscsi's callback (inside ``iscsi_service``): the command numbered ``serial``
        has its outcome in its task."""
        self._done.add(serial or 0)

    def _wait(self, pending: Pending) -> None:
        """Run libiscsi's event loop until ``pending`` completed; TransportError (and the
        session destroyed) when the connection fails or the deadline passes."""
        lib, poller = self._lib, self._poller
        while pending.serial not in self._done:
            ctx = self._ctx
            if not ctx:
                raise TransportError(pending.what, "session closed after an earlier failure")
            left = pending.deadline - time.monotonic()
            if left <= 0:
                self._fail()
                raise TransportError(pending.what, "timeout")
            fd = lib.iscsi_get_fd(ctx)
            if fd != self._polled:
                if self._polled is not None:
                    poller.unregister(self._polled)
                poller.register(fd, lib.iscsi_which_events(ctx))
                self._polled = fd
            else:
                poller.modify(fd, lib.iscsi_which_events(ctx))
            ready = poller.poll(min(left, 1.0) * 1000)
            if lib.iscsi_service(ctx, ready[0][1] if ready else 0) < 0:
                msg = self._error()
                self._fail()
                raise TransportError(pending.what, msg)
        self._done.discard(pending.serial)
        pending.completed = True

    def _fail(self) -> None:
        """After a transport failure the session is unusable: destroy it (no replay)."""
        ctx, self._ctx = self._ctx, None
        if ctx:
            self._lib.iscsi_destroy_context(ctx)

    def close(self) -> None:
        with self._lock:
            ctx, self._ctx = self._ctx, None
            if ctx:
                self._lib.iscsi_set_timeout(ctx, 5)
                self._lib.iscsi_logout_sync(ctx)  # best effort: the target may be gone
                self._lib.iscsi_destroy_context(ctx)

    def __enter__(self) -> IscsiTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pending:
    """A command sent by :meth:`IscsiTransport.submit`, not yet collected."""

    def __init__(self, transport: IscsiTransport, serial: int, task: ctypes._Pointer[_Task],
                 keep: _Borrowed, length: int, what: str, deadline: float) -> None:
        self.transport, self.serial, self.task, self.keep = transport, serial, task, keep
        self.length, self.what, self.deadline = length, what, deadline
        self.out = _IscsiData(length, keep.address)
        self.completed = False
        self._freed = False

    def result(self) -> tuple[bytes, int]:
        """Wait for the command: :meth:`IscsiTransport.collect`."""
        return self.transport.collect(self)

    def free(self) -> None:
        """Free the task and unpin the data (once); only once libiscsi let go of it (the
        command answered, or the session destroyed)."""
        if not self._freed:
            self._freed = True
            self.keep.release()
            self.transport._lib.scsi_free_scsi_task(self.task)


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (part of the stable ABI since 3.11)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


class _Borrowed:
    """The address of any contiguous buffer (``bytes``, a read-only ``memoryview`` of an
    ``mmap``, a ``bytearray`` …) held through the buffer protocol, so libiscsi sends the
    caller's bytes without a copy (``from_buffer`` refuses read-only buffers; copying a 1 MiB
    block per write costs CPU the drive's producer needs).  Pinned until :meth:`release`."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = _PyBuffer()
        _get_buffer(data, ctypes.byref(self._view), 0)  # PyBUF_SIMPLE: contiguous; raises
        self.address = ctypes.c_void_p(self._view.buf)
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            _release_buffer(ctypes.byref(self._view))


def _seconds(timeout: float) -> int:
    """libiscsi takes whole seconds; 0 would mean 'no timeout', so at least 1."""
    return max(1, math.ceil(timeout))
