"""Restore chosen paths into a running guest through VMware Tools guest operations.

Contract: :func:`upload_tree` walks each chosen path of an entry source (a guest file system of an
image point, or a file point's tree) and recreates it under :class:`GuestTarget` ``directory``
with ``MakeDirectoryInGuest`` and ``InitiateFileTransferToGuest`` + HTTPS PUT, over the LAN.

- Selection semantics are those of local restores: a root path (``/``) uploads the *contents*;
  any other path uploads the file or directory itself, by its name.
- Guest data is hostile: every name is checked on its own (:func:`unsafe_name`; for Windows
  guests also ``\\``, ``<>:"|?*``, control characters and trailing dots or spaces, so no
  name can address an alternate data stream or a device); guest paths are built only by joining
  checked names to the target directory.  Nothing is written outside it.
- Names that differ only in case (``README`` and ``readme``) are one name in a Windows guest:
  the first is uploaded, the others reported as ``duplicate-name`` (data loss, exit code 3)
  instead of meeting it as "exists" or replacing it with ``overwrite``.
- Symlinks (guest operations cannot create them), device nodes, fifos and sockets are skipped
  and reported, and so are files claiming more than 256 GiB (``too-large``: an upload sends
  holes as zeros); existing files are skipped (``exists``) unless ``overwrite``.  Modes and
  times are the guest's defaults.
- Per-file guest failures (a refused or failed transfer) become warnings; login refusals,
  VMware Tools going away and connection-level vSphere errors propagate.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from vmkeep.browse.errors import BrowseError
from vmkeep.disks import RestoreWarning
from vmkeep.disks.errors import DiskError
from vmkeep.disks.restore_model import EntrySource, RestoreSummary, unsafe_name
from vmkeep.disks.selection import TargetNames
from vmkeep.vsphere import guestops
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import (
    DatastoreIOError,
    GuestOperationFailed,
    GuestToolsUnavailable,
    NotFound,
)

MAX_DEPTH = 512
MAX_FILE = 256 << 30  # bytes; larger claimed sizes are refused (see the module docstring)
WINDOWS_DIR = re.compile(r"^[A-Za-z]:([\\/]|$)")
WINDOWS_BAD = re.compile(r'[<>:"|?*\x00-\x1f]|[. ]$')


@dataclass(frozen=True)
class GuestTarget:
    """``VM:GUEST_DIR`` — where in which guest to restore."""

    vm: str
    directory: str
    windows: bool = False

    @classmethod
    def parse(cls, spec: str) -> GuestTarget:
        vm, sep, directory = spec.partition(":")
        if not sep or not vm or not directory:
            raise BrowseError(f"guest target {spec!r}: expected VM:GUEST_DIR")
        windows = bool(WINDOWS_DIR.match(directory)) or "\\" in directory
        if not windows and not directory.startswith("/"):
            raise BrowseError(f"guest target {spec!r}: the guest directory must be absolute")
        return cls(vm, directory, windows)

    def names(self) -> TargetNames:
        """An empty record of the names in one folder of this target, compared as the guest
        compares them (a Windows guest ignores case)."""
        return TargetNames(str.casefold if self.windows else None)

    @property
    def sep(self) -> str:
        return "\\" if self.windows else "/"

    def path(self, comps: tuple[str, ...]) -> str:
        base = self.directory.rstrip("\\/") or self.sep
        if not comps:
            return base
        return base.rstrip(self.sep) + self.sep + self.sep.join(comps)

    def refuse(self, name: str) -> str | None:
        why = unsafe_name(name, backslash=self.windows, unicode=True)  # SOAP carries text
        if why is None and self.windows and WINDOWS_BAD.search(name):
            why = "not a valid Windows file name"
        return why


@dataclass(kw_only=True)
class GuestRestoreSummary(RestoreSummary):
    """An upload into a running guest (no links: guest operations cannot make them)."""

    vm: str
    target: str
    #: names chosen so far into ``target``, across sources (set by :func:`upload_tree`)
    names: TargetNames = field(default_factory=TargetNames, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "target": self.target,
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
            **self.outcome_json(),
        }


class _Uploader:
    def __init__(
        self,
        session: Session,
        vm_ref: Any,
        creds: Credentials,
        source: EntrySource,
        target: GuestTarget,
        overwrite: bool,
        progress: Callable[[int], None] | None,
        summary: GuestRestoreSummary,
    ) -> None:
        self.session, self.vm, self.creds, self.src = session, vm_ref, creds, source
        self.target, self.overwrite, self.progress = target, overwrite, progress
        self.summary = summary
        self.seen_dirs: set[int] = set()

    def warn(self, path: str, reason: str, detail: str = "") -> None:
        self.summary.skipped.append(RestoreWarning(path, reason, detail))

    def mkdir(self, comps: tuple[str, ...]) -> None:
        guestops.make_directory(self.session, self.vm, self.creds, self.target.path(comps))

    def file(self, spath: str, size: int, comps: tuple[str, ...]) -> None:
        try:
            stream = io.BufferedReader(cast(io.RawIOBase, self.src.open(spath)), 1 << 20)
        except DiskError as exc:
            self.warn(spath, "read-error", str(exc))
            return
        try:
            guestops.upload_file(
                self.session,
                self.vm,
                self.creds,
                self.target.path(comps),
                stream,
                size,
                overwrite=self.overwrite,
            )
        except GuestToolsUnavailable:
            raise
        except (GuestOperationFailed, NotFound, DatastoreIOError) as exc:
            message = exc.get_message()
            if "guest login refused" in message:
                raise
            reason = "exists" if "FileAlreadyExists" in message else "write-error"
            self.warn(spath, reason, message)
            return
        except DiskError as exc:
            self.warn(spath, "read-error", str(exc))
            return
        self.summary.files += 1
        self.summary.bytes += size
        if self.progress is not None:
            self.progress(size)

    def run(self, path: str, root_contents: bool) -> None:
        top = self.src.stat(path)
        pending: list[tuple[str, tuple[str, ...]]] = []
        if root_contents:
            pending.append((top.path, ()))
        elif not self.one(top.path, top.name, (), top.type, top.size, top.inode, pending):
            return
        while pending:
            spath, comps = pending.pop()
            try:
                entries = self.src.listdir(spath)
            except DiskError as exc:
                self.warn(spath, "read-error", str(exc))
                continue
            names = self.target.names()  # a Windows guest's names ignore case
            for e in entries:
                child = ("" if spath == "/" else spath) + "/" + e.name
                holder = names.claim(e.name, e.name)
                if holder is not None:
                    self.warn(child, "duplicate-name",
                              f"{e.name!r} and {holder!r} are one name in a Windows guest")
                    continue
                self.one(child, e.name, comps, e.type, e.size, e.inode, pending, e.kind)

    def one(
        self,
        spath: str,
        name: str,
        comps: tuple[str, ...],
        kind: str,
        size: int,
        inode: int | None,
        pending: list[tuple[str, tuple[str, ...]]],
        detail: str = "",
    ) -> bool:
        why = self.target.refuse(name)
        if why:
            self.warn(spath, "unsafe-name", f"{name!r}: {why}")
            return False
        here = (*comps, name)
        if kind == "dir":
            if len(here) > MAX_DEPTH:
                self.warn(spath, "too-deep")
                return False
            if inode is not None:
                if inode in self.seen_dirs:
                    self.warn(spath, "directory-cycle")
                    return False
                self.seen_dirs.add(inode)
            self.mkdir(here)
            self.summary.dirs += 1
            pending.append((spath, here))
        elif kind == "file":
            if size > MAX_FILE:
                self.warn(spath, "too-large", f"{size} bytes")
                return False
            self.file(spath, size, here)
        elif kind == "symlink":
            self.warn(spath, "symlink", "guest operations cannot create symbolic links")
        else:
            self.warn(spath, "special-file", detail or "other")
        return True


def upload_tree(
    session: Session,
    vm_ref: Any,
    creds: Credentials,
    source: EntrySource,
    paths: list[str],
    target: GuestTarget,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    summary: GuestRestoreSummary | None = None,
    where: str = "",
) -> GuestRestoreSummary:
    """Upload ``paths`` of ``source`` into ``target`` (see the module docstring).  With
    ``summary`` (of an earlier call into the same ``target``), names chosen then are taken:
    ``where`` tells this source apart in the ``duplicate-name`` reports (a volume: ``p2:``)."""
    summary = summary or GuestRestoreSummary(
        vm=target.vm, target=target.directory, names=target.names()
    )
    for path in paths:
        source.stat(path)  # FsNotFoundError before anything is uploaded
    paths = summary.names.unique_paths(source, paths, summary.skipped, where)
    guestops.make_directory(session, vm_ref, creds, target.path(()))
    up = _Uploader(session, vm_ref, creds, source, target, overwrite, progress, summary)
    for path in paths:
        up.run(path, root_contents=path.strip("/") == "")
    return summary
