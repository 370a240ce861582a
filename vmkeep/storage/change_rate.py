"""Unusual change warnings: a backup whose new data is far beyond its history, or suddenly does
not compress — what mass encryption by ransomware looks like from the backup's side (Veeam's
inline entropy analysis; both numbers come from the data path and the manifest headers a
backup already lists for its parent — no data is read for the check).

For a new restore point, the **history** is the newest :data:`HISTORY` earlier points of its
backup chain (an image's name, a VM's instanceUuid) that have a parent (incrementals: a
chain's first backup stores everything and says nothing about the rate), from their
manifests' per-disk ``bytes_new`` (raw bytes of chunks new to the repository) and
``bytes_stored`` (what they took after compression).  With at least
:data:`MIN_HISTORY` of them, two checks, each only when the new point adds at least
``min_bytes``:

* **volume**: its new bytes exceed ``factor`` times the history's median;
* **entropy**: its new data stored at :data:`INCOMPRESSIBLE` or more of its raw size (it does
  not compress: encrypted or already-compressed data) while the history's median was at most
  :data:`USUALLY_COMPRESSIBLE`.

Each finding is one warning sentence for the run's summary, log and report, and is recorded
in the restore point's ``meta.warnings`` (``vmkeep list`` marks the point); nothing is refused
or changed — the point is kept (it may be the last good one, or the first bad one: the warning
tells the administrator to look).  ``factor`` 0 turns the checks off.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vmkeep.settings import settings

#: Earlier incrementals compared against, and the fewest that make a history.
HISTORY = 10
MIN_HISTORY = 3
#: New data stored at this share of its raw size or more "does not compress".
INCOMPRESSIBLE = 0.95
#: ... which is unusual when the history's median share was at most this.
USUALLY_COMPRESSIBLE = 0.85
GIB = 1 << 30


@dataclass(frozen=True)
class Written:
    """What one restore point added to the repository."""

    new: int
    stored: int

    @property
    def share(self) -> float:
        """Stored bytes per new raw byte (1.0: nothing compressed)."""
        return self.stored / self.new if self.new else 0.0

    @classmethod
    def of_results(cls, results: Iterable[Any]) -> Written:
        """What disk backups (their ``DiskResult`` objects, not yet committed) added."""
        rows = list(results)
        return cls(sum(r.stats.bytes_new for r in rows), sum(r.stats.bytes_stored for r in rows))

    @classmethod
    def of_disks(cls, disks: Iterable[dict[str, Any]]) -> Written:
        rows = list(disks)
        return cls(sum(int(d.get("bytes_new") or 0) for d in rows),
                   sum(int(d.get("bytes_stored") or 0) for d in rows))


def history(points: Sequence[Any], exclude: str = "") -> list[Written]:
    """The history of a name from its points (oldest first, as ``list_points`` gives them):
    the newest :data:`HISTORY` incrementals other than ``exclude``."""
    incrementals = [p for p in points if p.parent and p.id != exclude]
    return [Written.of_disks(p.disks) for p in incrementals[-HISTORY:]]


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


def unusual_change(
    past: Sequence[Written], now: Written, *, factor: float, min_bytes: int
) -> list[str]:
    """The warnings for ``now`` against ``past`` (see the module docstring)."""
    if factor <= 0 or len(past) < MIN_HISTORY or now.new < min_bytes:
        return []
    found = []
    usual = statistics.median(w.new for w in past)
    if now.new > factor * max(usual, 1):
        against = (f"{now.new / usual:.0f}x the median of its last {len(past)} incremental "
                   f"backups ({_size(usual)})" if usual else
                   f"after {len(past)} incremental backups that added none")
        found.append(
            f"unusual change: {_size(now.new)} of new data, {against} — mass changes in the "
            "guest (encryption by ransomware, a reinstall, a defragmentation)? Check it before "
            "relying on this point"
        )
    compressing = [w.share for w in past if w.new]
    if compressing and now.share >= INCOMPRESSIBLE:
        usual_share = statistics.median(compressing)
        if usual_share <= USUALLY_COMPRESSIBLE:
            found.append(
                f"new data does not compress: {_size(now.new)} new, stored at "
                f"{now.share:.0%} of its size against {usual_share:.0%} usually — encrypted "
                "data (ransomware)? Check it before relying on this point"
            )
    return found


def change_warnings(chain: Sequence[Any], written: Written) -> list[str]:
    """The warnings for a point about to be committed that adds ``written``, by the thresholds
    of ``VMKEEP_CHANGE_WARN_FACTOR`` / ``VMKEEP_CHANGE_WARN_MIN_MIB``, against ``chain``: the
    earlier points of its backup chain, oldest first (an image's points of its name; a VM's
    points of its instanceUuid, so a renamed VM keeps its history)."""
    conf = settings()
    if conf.change_warn_factor <= 0:
        return []
    return unusual_change(history(chain), written, factor=conf.change_warn_factor,
                          min_bytes=conf.change_warn_min_mib << 20)


def is_change_warning(warning: str) -> bool:
    """Whether a point's recorded warning is one of these (``list`` marks such points)."""
    return warning.startswith(("unusual change:", "new data does not compress:"))
