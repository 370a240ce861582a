"""The backup window of a many-VM run (Veeam's "terminate the job if it exceeds the allowed
backup window"): ``stop_after`` (``5h``, ``90m``) after the run began, no further VM backup
starts — not a first attempt, not a retry.

* A VM not started by then is a failure of the run ("not started: the backup window ended at
  06:00 UTC …", exit code 1 with the others' results): it is backed up next time, and the report
  says which VMs the window left out, instead of a night's backups running into business hours.
* A VM whose backup has started finishes — its snapshot is released as always; vmkeep does not
  abort a disk read half-way to honour the window (a cut-off backup would leave nothing usable
  and its snapshot would have cost the datastore for nothing).
* A retry whose pause would end after the window is not made.

The time is :func:`vmkeep.clock.now` (tests move it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from vmkeep import clock
from vmkeep.errors import VmkeepError
from vmkeep.storage.retention import parse_duration


class BackupWindowEnded(VmkeepError):
    """not started: the backup window ended at {} ({} after the run began)"""


@dataclass(frozen=True)
class BackupWindow:
    """When no more VM backups may start (``ends`` ``None``: never)."""

    ends: datetime | None = None
    length: str = ""

    @classmethod
    def starting_now(cls, stop_after: str | None) -> BackupWindow:
        """The window of a run that begins now, ``stop_after`` long (``None``: no window)."""
        if not stop_after:
            return cls()
        return cls(clock.now() + parse_duration(stop_after), stop_after)

    def is_open(self, for_s: float = 0.0) -> bool:
        """Whether the window is still open, and ``for_s`` seconds from now."""
        return self.ends is None or clock.now() + timedelta(seconds=for_s) < self.ends

    def ensure_open(self) -> None:
        """Raise :class:`BackupWindowEnded` when the window has ended."""
        if not self.is_open():
            assert self.ends is not None
            raise BackupWindowEnded(self.ends.strftime("%Y-%m-%d %H:%M:%S UTC"), self.length)
