"""Chosen paths of one tree as a source for the safe writer: a virtual root holding each chosen
entry under its own name (``restore files POINT:/a/x POINT:/b/y --to DIR`` writes ``DIR/x`` and
``DIR/y``, like ``cp -r``).

Contract: every path is looked up when the selection is made, so a missing one raises the
source's not-found error before anything is written.  Two chosen entries with the same name
cannot both stand in the virtual root: the first wins and each later one is reported in
``warnings`` as ``duplicate-name`` — a reason in :data:`~vmkeep.disks.restore_model.DATA_LOSS`,
so the restore says it is incomplete instead of dropping the entry in silence.  Reads go to
the source unchanged (``stat``, ``listdir``, ``open`` of the path below the chosen entry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO

from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import EntrySource, RestoreWarning

#: a path no source holds (a NUL cannot be in a name): a name outside the selection
_MISSING = "/\0missing"


class TargetNames:
    """The names given out so far in one folder of a restore target, compared the way that
    target compares names (``fold``: ``str.casefold`` for a Windows guest, where ``README`` and
    ``readme`` are one; exact otherwise).  One object per target folder, shared by every source
    written there (the volumes of an image point: ``p1/etc/hosts`` and ``p2/etc/hosts`` must
    not meet as "exists")."""

    def __init__(self, fold: Callable[[str], str] | None = None) -> None:
        self._fold = fold
        self._holder: dict[str, str] = {}  # compared name -> who holds it (``where + path``)

    def claim(self, name: str, who: str) -> str | None:
        """Give ``name`` to ``who``; ``None`` when it was free (or already ``who``'s), else the
        earlier holder (the caller reports ``duplicate-name``)."""
        key = self._fold(name) if self._fold is not None else name
        holder = self._holder.setdefault(key, who)
        return None if holder == who else holder

    def choose(
        self, source: EntrySource, paths: list[str], warnings: list[RestoreWarning],
        where: str = "",
    ) -> dict[str, str]:
        """``{name: path}`` of the chosen entries of ``source`` that are not a root (``/``), in
        order; an entry whose name is held already is left out and reported in ``warnings`` as
        ``duplicate-name``.  ``where`` names the source in those reports (a volume, ``p2:``)."""
        top: dict[str, str] = {}
        for path in paths:
            if not path.strip("/"):
                continue  # a root: its contents, not an entry by name
            name = source.stat(path).name  # not found: raised before anything is written
            holder = self.claim(name, where + path)
            if holder is not None:
                warnings.append(RestoreWarning(
                    path, "duplicate-name", f"{name!r} chosen twice (kept {holder})"
                ))
                continue
            top.setdefault(name, path)
        return top

    def unique_paths(
        self, source: EntrySource, paths: list[str], warnings: list[RestoreWarning],
        where: str = "",
    ) -> list[str]:
        """``paths`` with each root kept and each named entry once (:meth:`choose`)."""
        kept = set(self.choose(source, paths, warnings, where).values())
        return list(dict.fromkeys(p for p in paths if not p.strip("/") or p in kept))


class Selection:
    """The entries at ``paths`` of ``source``, each under its own name in a virtual root."""

    def __init__(
        self,
        source: EntrySource,
        paths: list[str],
        warnings: list[RestoreWarning],
        names: TargetNames | None = None,
        where: str = "",
    ) -> None:
        self.source = source
        self.top = (names or TargetNames()).choose(source, paths, warnings, where)

    def real(self, path: str) -> str:
        """The source's path for ``path`` of the virtual root (``/`` for the root itself)."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "/"
        head = self.top.get(parts[0])
        if head is None:
            return _MISSING
        return "/".join([head.rstrip("/"), *parts[1:]])

    def stat(self, path: str, follow: bool = False) -> Entry:
        if self.real(path) == "/":
            return Entry(name="", path="/", type="dir", size=0, mtime_ns=0, mode=0o40755)
        return self.source.stat(self.real(path), follow)

    def listdir(self, path: str = "/") -> list[Entry]:
        if path in ("", "/"):
            return [
                replace(self.source.stat(real), name=name, path="/" + name)
                for name, real in self.top.items()
            ]
        return self.source.listdir(self.real(path))

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        return self.source.open(self.real(path), stream)
