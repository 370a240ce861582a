"""The one transport interface every SCSI command goes through.

``execute(cdb, data_out=None, data_in_len=0, timeout=…) -> (data, residual)``:

* exactly one of ``data_out`` (bytes written to the device) or ``data_in_len`` (bytes
  expected from it) may be given; neither means no data phase;
* returns the bytes received (``b""`` for writes) and the residual (expected minus
  transferred, ≥ 0) on GOOD status;
* raises :class:`~vmkeep.scsi.errors.CheckCondition` (or a subclass) with the decoded sense
  when the device answers CHECK CONDITION — *including* the informational cases (filemark,
  early warning, ILI) where the command did move data: the exception carries ``residual`` and,
  for reads, ``data`` holds what arrived (``exc.data``), so the SSC layer decides;
* raises :class:`~vmkeep.scsi.errors.TransportError` for everything where the outcome is
  unknown: connection lost, target gone, timeout, BUSY/TASK ABORTED, any libc or library error;
* ``timeout`` is in seconds and always enforced (no "wait forever").

Optionally, ``submit(cdb, data_out, timeout) -> pending`` (libiscsi's transport has it) sends a
command with a data-out phase without waiting; ``pending.result()`` then returns or raises what
``execute`` would.  A tape writer uses it to keep a second WRITE queued at the drive
(:meth:`~vmkeep.scsi.ssc.TapeDrive.submit_write`); a transport without it is used one command at
a time.

Transports are not thread-safe: one drive, one transport, one thread at a time (the tape writer
thread owns its drive's transport while it writes).  :func:`open_transport` maps a URL to an
implementation: ``iscsi://host:port/iqn/lun`` (:mod:`vmkeep.scsi.iscsi`, user-space libiscsi)
and ``sg:///dev/sgN`` (:mod:`vmkeep.scsi.sg`, the kernel's SG_IO ioctl).
"""

from __future__ import annotations

from typing import Protocol

from vmkeep.errors import UsageError

#: Default command timeouts (seconds): ordinary commands, data transfers, positioning.
SHORT_TIMEOUT = 60.0
IO_TIMEOUT = 900.0
LONG_TIMEOUT = 14400.0


class Transport(Protocol):
    """See the module docstring for the contract."""

    url: str

    def execute(
        self,
        cdb: bytes,
        data_out: bytes | memoryview | None = None,
        data_in_len: int = 0,
        timeout: float = SHORT_TIMEOUT,
    ) -> tuple[bytes, int]: ...

    def close(self) -> None: ...


def check_device_url(url: str) -> None:
    """A :class:`UsageError` unless ``url`` is a device URL :func:`open_transport` can open
    (``iscsi://host[:port]/iqn/lun`` in full, or ``sg:///dev/…``); nothing is opened."""
    if url.startswith("iscsi://"):
        from vmkeep.scsi.iscsi import parse_url

        parse_url(url)
        return
    if url.startswith("sg://") and url[len("sg://"):].startswith("/"):
        return
    raise UsageError(f"unknown SCSI device URL {url!r} (iscsi://host:port/iqn/lun or sg:///dev/sgN)")


def open_transport(url: str, timeout: float = SHORT_TIMEOUT) -> Transport:
    """Open ``iscsi://host:port/iqn/lun`` or ``sg:///dev/sgN``."""
    if url.startswith("iscsi://"):
        from vmkeep.scsi.iscsi import IscsiTransport

        return IscsiTransport(url, timeout)
    if url.startswith("sg://"):
        from vmkeep.scsi.sg import SgTransport

        return SgTransport(url[len("sg://") :])
    raise UsageError(f"unknown SCSI device URL {url!r} (iscsi://host:port/iqn/lun or sg:///dev/sgN)")
