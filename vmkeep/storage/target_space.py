"""Free space on a repository's target, warned about while there is still room (Veeam's "warn
me when free disk space is below 10 %" for backup storage).

A backup that runs out of space fails with ``TargetFull`` (exit code 15) and leaves no restore
point; before that, every backup job asks the target how much is left — a ``statvfs`` of a
local, NFS or iSCSI path, the SMB share's volume size for this user
(:meth:`vmkeep.storage.backend.Backend.free_space`) — and, below
``repo_warn_free_percent`` (``VMKEEP_REPO_WARN_FREE_PERCENT``, default 10; 0: never), adds a
warning to its summary and its job report (VM and image backups: to the restore point too; a
file backup lists it among its file warnings).  SFTP and object stores cannot
tell: no warning there.  ``vmkeep stats`` shows the same figures.
"""

from __future__ import annotations

from typing import Any


def free_space(repository: Any) -> dict[str, Any] | None:
    """``{"total", "free", "free_percent"}`` of the repository's target, ``None`` when the
    target cannot tell."""
    found = repository.backend.free_space()
    if found is None or found[0] <= 0:
        return None
    total, free = found
    return {"total": total, "free": free, "free_percent": round(100.0 * free / total, 1)}


def space_warnings(repository: Any, warn_percent: float) -> list[str]:
    """A warning when the target has less than ``warn_percent`` % free; else ``[]``."""
    space = free_space(repository) if warn_percent > 0 else None
    if space is None or space["free_percent"] >= warn_percent:
        return []
    return [
        f"repository target {repository.backend.location}: {space['free_percent']:.1f} % free "
        f"({space['free'] / (1 << 30):.1f} GiB of {space['total'] / (1 << 30):.1f} GiB), below "
        f"{warn_percent:g} % (VMKEEP_REPO_WARN_FREE_PERCENT): prune with a shorter retention or "
        "add space before backups fail"
    ]


def backup_warnings(repository: Any) -> list[str]:
    """:func:`space_warnings` at ``VMKEEP_REPO_WARN_FREE_PERCENT`` (what backup jobs call)."""
    from vmkeep.settings import settings

    return space_warnings(repository, settings().repo_warn_free_percent)
