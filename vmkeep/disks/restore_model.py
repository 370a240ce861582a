"""The vocabulary of safe restores: what a source must offer, what a restore reports, and which
names may become a single component on the host.

Contract: :func:`unsafe_name` returns why a guest name cannot be one path component of the
target (empty, ``.``/``..``, ``/`` — and ``\\`` where the target separates paths with it too: a
Windows guest, an SMB share —, NUL, over 255 bytes, the shape of vmkeep's restore temporaries)
or ``None``.  On a Linux target a backslash is a character like any other, and Linux guests
have such names: every Debian 12 system has
``/usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice`` (systemd's escaping).
:data:`DATA_LOSS` lists the warning reasons that mean selected data did not come back (a
restore with any of them is incomplete: exit code 3, ``"ok": false``);
:class:`RestoreWarning`, :class:`RestoreSummary` and :class:`Ownership` are plain data;
:class:`EntrySource` is the protocol :func:`vmkeep.disks.safe_restore.restore` reads from (a
:class:`~vmkeep.disks.fs.base.FileSystem` satisfies it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from vmkeep.disks.errors import DiskError
from vmkeep.disks.fs.base import Entry
from vmkeep.storage.partial_files import is_part_name

MAX_NAME = 255
#: Reasons that lose selected data: read or write failures, and refusals of guest entries whose
#: content is then missing from the target (unsafe names, a subtree behind a planted link or
#: non-directory, too large, too deep, a directory cycle, two selections of one name).  Not in
#: it: ``exists`` (kept by choice, ``--overwrite`` replaces) and ``special-file`` (device nodes,
#: FIFOs and sockets are never restored, by design).
DATA_LOSS = frozenset(
    {
        "read-error",
        "write-error",
        "unsafe-name",
        "not-a-directory",
        "too-large",
        "too-deep",
        "directory-cycle",
        "duplicate-name",
    }
)


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
    """What a restore wrote and what it refused (``skipped``: stable reason codes).  The restore
    verbs' summaries (into a folder, a guest, a share) extend it with where they wrote."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: list[RestoreWarning] = field(default_factory=list)

    @property
    def errors(self) -> list[RestoreWarning]:
        """Warnings that mean selected data did not come back (see :data:`DATA_LOSS`)."""
        return [w for w in self.skipped if w.reason in DATA_LOSS]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, other: RestoreSummary) -> None:
        """Count ``other`` (one writer's run) into this summary."""
        for name in ("files", "dirs", "symlinks", "hardlinks", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped.extend(other.skipped)

    def counts_json(self) -> dict[str, int]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
        }

    def outcome_json(self) -> dict[str, Any]:
        """``ok``, ``errors`` (how many warnings lost data) and every warning."""
        return {
            "ok": self.ok,
            "errors": len(self.errors),
            "skipped": [
                {"path": w.path, "reason": w.reason, "detail": w.detail} for w in self.skipped
            ],
        }


@dataclass(frozen=True)
class Ownership:
    """What a restore gives restored files beyond content, mode bits and times: ``owner`` — the
    numeric uid and gid as backed up; ``setid`` — the set-uid and set-gid bits.  The default
    gives neither (files belong to the restoring user, set-id bits are dropped): a guest's data
    is untrusted.  :func:`refuse_ownership` says whether a restore can honour it."""

    owner: bool = False
    setid: bool = False


def refuse_ownership(ownership: Ownership, target: str, *, local: bool) -> None:
    """:class:`~vmkeep.errors.UsageError` unless ``ownership`` can be honoured: owners
    (numeric uid and gid as backed up) are given only by root and only in a local folder (an
    SFTP or SMB server, or a guest, decides them itself); set-uid/set-gid bits only together
    with owners — on files the restoring root would otherwise own, every one would become
    set-uid root."""
    from vmkeep.errors import UsageError

    if ownership.setid and not ownership.owner:
        raise UsageError("--keep-setid needs --preserve-owner (a set-uid file owned by the "
                         "restoring root would run as root)")
    if not ownership.owner:
        return
    if not local:
        raise UsageError(f"--preserve-owner and --keep-setid restore into a local folder, not "
                         f"{target}")
    import os

    if os.geteuid() != 0:
        raise UsageError("--preserve-owner needs root: only root can give files another owner")


def is_utf8(name: str) -> bool:
    """Whether ``name`` can be sent as UTF-8 text: not if it holds bytes that are not UTF-8
    (kept as surrogates by ``surrogateescape``) or NTFS's unpaired surrogates — targets whose
    names are Unicode (a guest's file operations, SMB) cannot spell it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: the largest NTFS alternate data stream a restore keeps as an extended attribute (Linux takes
#: at most 64 KiB in one attribute's value)
MAX_STREAM = 64 * 1024


class StreamNotKept(Exception):
    """An NTFS alternate data stream no extended attribute can hold; the message is the
    ``stream-error`` warning's detail."""


def stream_xattr(source: EntrySource, path: str, stream: str) -> tuple[str, bytes]:
    """The alternate data stream ``stream`` of the NTFS file ``path`` as the extended attribute
    a restore gives the restored file: ``(user.<stream>, its bytes)``.  :class:`StreamNotKept`
    when it cannot be one: a name that is not UTF-8 (an unpaired UTF-16 surrogate), more than
    :data:`MAX_STREAM` bytes, or a read error."""
    if not is_utf8(stream):
        raise StreamNotKept(f"{stream!r}: a name no extended attribute can hold")
    try:
        reader = source.open(path, stream)
        try:
            data = reader.read(MAX_STREAM + 1)
        finally:
            reader.close()
    except (OSError, DiskError) as exc:
        raise StreamNotKept(f"{stream}: {getattr(exc, 'strerror', None) or exc}") from exc
    if len(data) > MAX_STREAM:
        raise StreamNotKept(f"{stream}: stream {stream!r} larger than 64 KiB")
    return f"user.{stream}", data


def unsafe_link_target(target: str) -> str | None:
    """Why the guest's symlink target ``target`` cannot be written as a link on a Linux target
    (empty, NUL, or an NTFS link's unpaired UTF-16 surrogate, which no Linux path can spell),
    or ``None``."""
    if not target or "\0" in target:
        return "empty or NUL symlink target"
    try:
        target.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "symlink target holds an unpaired UTF-16 surrogate, which no Linux path can spell"
    return None


def unsafe_name(name: str, *, backslash: bool = False, unicode: bool = False) -> str | None:
    """Why ``name`` cannot be a single path component of the target, or ``None`` if it can;
    ``backslash``: the target separates paths with ``\\`` too (Windows, SMB); ``unicode``: the
    target's names are Unicode text (a guest's file operations, SMB), so bytes that are not
    UTF-8 cannot be spelled there (a Linux file system, SFTP take them as they are)."""
    if name in ("", ".", ".."):
        return "empty or relative directory name"
    if "/" in name or (backslash and "\\" in name):
        return "contains a path separator"
    if "\0" in name:
        return "contains NUL"
    try:
        encoded = name.encode("utf-8", "surrogateescape")  # the bytes a Linux target gets
    except UnicodeEncodeError:  # an NTFS name's unpaired UTF-16 surrogate
        return "holds an unpaired UTF-16 surrogate, which no UTF-8 name can spell"
    if len(encoded) > MAX_NAME:
        return "longer than 255 bytes"
    if unicode and not is_utf8(name):
        return "not UTF-8: the target's names are Unicode"
    if is_part_name(name):
        return "reserved for vmkeep's temporary restore files"
    return None
