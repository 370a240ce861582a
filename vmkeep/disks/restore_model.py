"""The vocabulary of safe restores: what a source must offer, what a restore reports, and which
names may become a single component on the host.

Contract: :func:`unsafe_name` returns why a guest name cannot be one host path component (empty,
``.``/``..``, ``/`` or ``\\``, NUL, over 255 bytes) or ``None``; :class:`RestoreWarning` and
:class:`RestoreSummary` are plain data; :class:`EntrySource` is the protocol
:func:`vmkeep.disks.safe_restore.restore` reads from (a
:class:`~vmkeep.disks.fs.base.FileSystem` satisfies it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from vmkeep.disks.fs.base import Entry

MAX_NAME = 255


class EntrySource(Protocol):
    def stat(self, path: str, follow: bool = False) -> Entry: ...
    def listdir(self, path: str = "/") -> list[Entry]: ...
    def open(self, path: str, stream: str | None = None) -> BinaryIO: ...


@dataclass(frozen=True)
class RestoreWarning:
    """A refused or failed entry: ``reason`` is a stable code, ``detail`` free text."""

    path: str
    # unsafe-name | special-file | exists | not-a-directory | too-large | too-deep
    # | directory-cycle | read-error | write-error
    reason: str
    detail: str = ""


@dataclass
class RestoreSummary:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: list[RestoreWarning] = field(default_factory=list)


def unsafe_name(name: str) -> str | None:
    """Why ``name`` cannot be a single path component on the host, or ``None`` if it can."""
    if name in ("", ".", ".."):
        return "empty or relative directory name"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if "\0" in name:
        return "contains NUL"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        return "longer than 255 bytes"
    return None
