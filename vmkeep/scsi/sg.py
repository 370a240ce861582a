"""The Linux SCSI generic (``/dev/sgN``) transport: one ``SG_IO`` ioctl per command.

Pure Python (ctypes structure + ``fcntl.ioctl``).  Contract as in :mod:`vmkeep.scsi.transport`,
and specifically:

* the node is opened ``O_RDWR`` without ``O_CREAT`` and must be a character device (checked on
  the open descriptor with ``fstat``): a missing node is :class:`DeviceNotFound`, never a
  regular file created in ``/dev``;
* ``timeout`` goes into the header (milliseconds); the kernel aborts the command after it;
* CHECK CONDITION raises with the sense the kernel copied (``sb_len_wr`` bytes); any host or
  driver status other than "sense available", or another SCSI status, is a transport error;
* the residual comes from ``resid``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from vmkeep.scsi.errors import DeviceNotFound, TransportError, check_condition
from vmkeep.scsi.sense import decode_sense
from vmkeep.scsi.transport import SHORT_TIMEOUT

SG_IO = 0x2285
DXFER_NONE, DXFER_TO_DEV, DXFER_FROM_DEV = -1, -2, -3
SENSE_LEN = 96
DRIVER_SENSE = 0x08


class SgIoHdr(ctypes.Structure):
    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


class SgTransport:
    def __init__(self, path: str) -> None:
        self.url = f"sg://{path}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceNotFound(path) from None
        except OSError as exc:
            raise TransportError(self.url, os.strerror(exc.errno or errno.EIO)) from None
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            os.close(fd)
            raise DeviceNotFound(f"{path} is not a character device")
        self.fd: int | None = fd

    def execute(
        self,
        cdb: bytes,
        data_out: bytes | memoryview | None = None,
        data_in_len: int = 0,
        timeout: float = SHORT_TIMEOUT,
    ) -> tuple[bytes, int]:
        if data_out is not None and data_in_len:
            raise ValueError("data_out and data_in_len are exclusive")
        if self.fd is None:
            raise TransportError(self.url, "closed")
        what = f"{self.url} opcode {cdb[0]:02x}h"
        cdb_buf = ctypes.create_string_buffer(bytes(cdb), len(cdb))
        sense = ctypes.create_string_buffer(SENSE_LEN)
        hdr = SgIoHdr()
        hdr.interface_id = ord("S")
        hdr.cmd_len = len(cdb)
        hdr.cmdp = ctypes.cast(cdb_buf, ctypes.c_void_p)
        hdr.mx_sb_len = SENSE_LEN
        hdr.sbp = ctypes.cast(sense, ctypes.c_void_p)
        hdr.timeout = max(1, int(timeout * 1000))
        buf = None
        if data_out is not None:
            buf = ctypes.create_string_buffer(bytes(data_out), len(data_out))
            hdr.dxfer_direction, hdr.dxfer_len = DXFER_TO_DEV, len(data_out)
        elif data_in_len:
            buf = ctypes.create_string_buffer(data_in_len)
            hdr.dxfer_direction, hdr.dxfer_len = DXFER_FROM_DEV, data_in_len
        else:
            hdr.dxfer_direction = DXFER_NONE
        if buf is not None:
            hdr.dxferp = ctypes.cast(buf, ctypes.c_void_p)
        try:
            fcntl.ioctl(self.fd, SG_IO, hdr)
        except OSError as exc:
            raise TransportError(what, f"SG_IO: {os.strerror(exc.errno or errno.EIO)}") from None
        residual = max(0, hdr.resid)
        if hdr.host_status or (hdr.driver_status & ~DRIVER_SENSE):
            raise TransportError(
                what, f"host status {hdr.host_status:#x}, driver status {hdr.driver_status:#x}"
            )
        data = b""
        if data_in_len and buf is not None:
            data = buf.raw[: data_in_len - residual]
        if hdr.status == 0 and not hdr.sb_len_wr:
            return data, residual
        if hdr.status == 2 or hdr.sb_len_wr:
            err = check_condition(what, decode_sense(sense.raw[: hdr.sb_len_wr]), residual)
            err.data = data  # type: ignore[attr-defined]
            raise err
        raise TransportError(what, f"SCSI status {hdr.status:#x}")

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
