"""Temporary names for restores in progress, and the cleanup of those a killed run left behind.

Restores never write under a final name: a file (``restore files``) or an image (``restore
image``) is written to a temporary name in the target's own folder and renamed into place only
when complete, so a re-run never mistakes a half-written file for a restored one.

Name format (stable; specified in docs/format.md, "Restore temporaries")::

    .vmkeep-part-<host>-<pid>-<random>            files of ``restore files``
    .<target name>.vmkeep-part-<host>-<pid>-<random>   images of ``restore image``

``host`` is 8 hex digits of BLAKE2b of the host name, ``pid`` the writing process, ``random``
16 hex digits.  :func:`is_stale` says whether such a name was left by a process that is gone: one
of this host whose pid no longer exists, or one of another host (a shared NFS/SMB folder) older
than :data:`FOREIGN_STALE_S`.  Images restored by vmkeep before this format
(``.<target name>.vmkeep-<8 hex>``, no writer recorded) count as stale once older than
:data:`FOREIGN_STALE_S` too.  A guest name of this shape is refused by the safe restorer
(:func:`vmkeep.disks.restore_model.unsafe_name`), so a cleanup never removes a restored file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
import time

PART_MARK = "vmkeep-part-"
#: A leftover of another host is removed only once it is this old (its writer may be alive).
FOREIGN_STALE_S = 24 * 3600
_PATTERN = re.compile(
    r"^\.(?:(?P<target>.+)\.)?vmkeep-part-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{16}$",
    re.DOTALL,
)
_LEGACY = re.compile(r"^\.(?P<target>.+)\.vmkeep-[0-9a-f]{8}$", re.DOTALL)


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def part_name(target_name: str | None = None) -> str:
    """A fresh temporary name; beside an image: ``target_name`` is the image's base name."""
    tail = f"{PART_MARK}{_host_tag()}-{os.getpid()}-{secrets.token_hex(8)}"
    return f".{target_name}.{tail}" if target_name else f".{tail}"


def is_part_name(name: str) -> bool:
    """Whether ``name`` has the shape of a restore temporary (of a file or of any image)."""
    return _PATTERN.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(name: str, mtime: float, target_name: str | None = None) -> bool:
    """Whether ``name`` is a temporary (of ``target_name``, or of a file when None) whose writer
    is gone (see the module docstring)."""
    m = _PATTERN.match(name)
    if m is None:
        legacy = _LEGACY.match(name) if target_name else None
        return (
            legacy is not None
            and legacy.group("target") == target_name
            and time.time() - mtime > FOREIGN_STALE_S
        )
    if m.group("target") != target_name:
        return False
    if m.group("host") == _host_tag():
        return not _pid_alive(int(m.group("pid")))
    return time.time() - mtime > FOREIGN_STALE_S


def remove_stale(dir_fd: int, target_name: str | None = None) -> int:
    """Remove the stale temporaries (regular files only, never followed) in the folder open as
    ``dir_fd``; returns how many were removed.  Errors are ignored (best effort)."""
    removed = 0
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return 0
    for name in names:
        if ".vmkeep-" not in name and PART_MARK not in name:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and is_stale(name, st.st_mtime, target_name):
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
        except OSError:
            continue
    return removed


def remove_stale_beside(path: str) -> int:
    """Remove stale temporaries of the image ``path`` from its folder (if it can be opened)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, fd)
        return remove_stale(fd, os.path.basename(path))
