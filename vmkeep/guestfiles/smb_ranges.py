"""Where a file on an SMB share holds data: ``FSCTL_QUERY_ALLOCATED_RANGES`` ([MS-FSCC] 2.3.41).

The SMB counterpart of :func:`vmkeep.holes.data_ranges`, so a sparse file on a share (a VM
disk, a database file, a pre-allocated log) is backed up without reading its holes and restored
sparse.  One IOCTL on the open handle: the input is one ``FILE_ALLOCATED_RANGE_BUFFER``
(``FileOffset``, ``Length``: signed 64-bit little-endian) covering the file, the answer an array
of them.  Windows answers from NTFS's allocation; Samba from ``SEEK_DATA``/``SEEK_HOLE`` for a
file it reports sparse, and with one range covering the file otherwise.

Contract as :func:`vmkeep.holes.data_ranges`: ``(offset, length)`` ranges in order, disjoint,
within ``[0, size)``, every byte outside them reads as zero.  ``None`` when the server does not
say (no IOCTL support, more ranges than fit one answer, an answer that breaks the contract):
the caller then reads the whole file, which is always correct.  Reads no file data.
"""

from __future__ import annotations

import struct
from typing import Any

#: FILE_ALLOCATED_RANGE_BUFFER
RANGE = struct.Struct("<qq")
#: the largest answer asked for (65,536 ranges); more than that: read the whole file
MAX_ANSWER = 1 << 20


def allocated_ranges(raw: Any, size: int) -> list[tuple[int, int]] | None:
    """The data ranges of the open ``smbclient`` file ``raw`` (an ``SMBRawIO``) of ``size``
    bytes, as the server reports them; ``None`` if it does not (see the module contract)."""
    from smbclient._io import SMBFileTransaction, ioctl_request
    from smbprotocol.exceptions import SMBException
    from smbprotocol.ioctl import CtlCode, IOCTLFlags

    try:
        answer_size = min(MAX_ANSWER, int(raw.fd.connection.max_transact_size))
        with SMBFileTransaction(raw) as transaction:
            ioctl_request(
                transaction,
                CtlCode.FSCTL_QUERY_ALLOCATED_RANGES,
                output_size=answer_size,
                flags=IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL,
                input_buffer=RANGE.pack(0, size),
            )
        answer = bytes(transaction.results[0])
    except (SMBException, OSError, AttributeError, ValueError):
        return None
    return parse_ranges(answer, size)


def parse_ranges(answer: bytes, size: int) -> list[tuple[int, int]] | None:
    """The ranges of an IOCTL answer, clipped to ``size`` and joined where adjacent; ``None``
    for an answer that is not whole records, out of order, overlapping or negative."""
    if len(answer) % RANGE.size:
        return None
    out: list[tuple[int, int]] = []
    end = 0
    for offset, length in RANGE.iter_unpack(answer):
        if offset < 0 or length <= 0 or offset < end:
            return None
        end = offset + length
        if offset >= size:
            break
        length = min(length, size - offset)
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((offset, length))
    return out
