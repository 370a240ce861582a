"""Standard output as a restore target (``restore image --to -``, ``restore files --to -``).

Contract:

* :data:`STDOUT` is the target argument that names it, :data:`STDOUT_FD` the descriptor written
  (below Python's buffers, so nothing is held back or written twice), :data:`STDOUT_NAME` its
  name in messages.
* :class:`StreamWriter` writes every byte it is given, in order, retrying short writes; it
  counts what went out (``pos``) so an error can say where the stream stopped.
* A write the reader refused (a closed pipe: ``| head``) is
  :class:`~vmkeep.storage.errors.RestoreStreamClosed`; any other failed write (a full disk
  behind ``>``, an I/O error) :class:`~vmkeep.storage.errors.RestoreTargetError` (exit 15).
  Nothing is retried after an error: what the reader already has cannot be taken back.
"""

from __future__ import annotations

import os

from vmkeep.storage.errors import RestoreStreamClosed, RestoreTargetError

#: the target argument that names standard output
STDOUT = "-"
#: the descriptor a restore to :data:`STDOUT` writes
STDOUT_FD = 1
#: standard output's name in messages
STDOUT_NAME = "standard output"


class StreamWriter:
    """The descriptor ``fd`` as a binary file (for :mod:`tarfile` as for a disk's bytes): every
    byte written, errors typed (see the module docstring)."""

    def __init__(self, fd: int = STDOUT_FD, name: str = STDOUT_NAME) -> None:
        self.fd, self.name, self.pos = fd, name, 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = view.nbytes
        while view.nbytes:
            try:
                written = os.write(self.fd, view)
            except BrokenPipeError:
                raise RestoreStreamClosed(self.name, self.pos) from None
            except OSError as exc:  # a full disk behind a redirection (ENOSPC), an I/O error
                raise RestoreTargetError(
                    self.name, f"{exc.strerror or exc} after {self.pos} bytes"
                ) from None
            view = view[written:]
            self.pos += written
        return total
