"""What every disk reader in vmkeep is: :class:`ByteSource` and :class:`DiskReader`.

One definition, at the lowest layer that reads disks (the data path here in ``storage/``), so
readers of every layer meet it without importing each other:

=============================================  ==============================================
implementation                                 reads
=============================================  ==============================================
:class:`vmkeep.storage.reader.PointReader`     a disk of a restore point (repository chunks)
:class:`vmkeep.vsphere.transports.ExtentReader` a VM disk's flat extents or delta chain over
                                               HTTPS / a datastore mount (hot-add: a device)
:class:`vmkeep.vsphere.nfc.NfcDiskSource`      a VM disk's NFC export stream (sequential)
:class:`vmkeep.disks.pread.ImageReader`        a local raw or VMDK image
=============================================  ==============================================

and :class:`ByteSource` is what they are built from (one file: a datastore file over HTTPS, a
local file, a delta chain, a device).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ByteSource(Protocol):
    """Random access to one file or disk.

    ``pread(offset, length)`` returns ``length`` bytes at ``offset`` — fewer only where the
    source ends — and may be called from several threads at once.  It never moves a file
    position (there is none).
    """

    def pread(self, offset: int, length: int) -> bytes: ...


@runtime_checkable
class DiskReader(ByteSource, Protocol):
    """A whole virtual disk opened for reading: ``size`` bytes, :meth:`pread` as in
    :class:`ByteSource` (short only at ``size``), :meth:`close` releases what the reader holds
    (connections, devices, a lease; idempotent).

    ``random_access`` is False for a reader that is cheap only in ascending order (an NFC
    stream): the data path then skips work that needs random reads (CBT audit samples).
    """

    size: int
    random_access: bool

    def close(self) -> None: ...
