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


def by_name(
    source: EntrySource,
    paths: list[str],
    warnings: list[RestoreWarning],
    taken: dict[str, str] | None = None,
    where: str = "",
    fold: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """``{name: path}`` of the chosen entries that are not a root (``/``), in order; a later
    entry with a name already chosen is left out and reported as ``duplicate-name``.  For every
    writer that puts chosen entries side by side by name (a folder, a guest, a share).

    ``taken``: names chosen from other sources into the same target (``{name: where + path}``,
    updated here), so that ``p1/etc/hosts`` and ``p2/etc/hosts`` do not meet as "exists";
    ``where`` names this source in those (a volume, ``p2:``); ``fold``: how the target compares
    names (``str.casefold`` for a Windows guest, where ``README`` and ``readme`` are one)."""
    taken = {} if taken is None else taken
    top: dict[str, str] = {}
    for path in paths:
        if not path.strip("/"):
            continue  # a root: its contents, not an entry by name
        name = source.stat(path).name  # not found: raised before anything is written
        same = fold(name) if fold is not None else name
        if same in taken:
            if taken[same] != where + path:
                warnings.append(RestoreWarning(
                    path, "duplicate-name", f"{name!r} chosen twice (kept {taken[same]})"
                ))
            continue
        taken[same] = where + path
        top[name] = path
    return top


def roots_and_unique(
    source: EntrySource,
    paths: list[str],
    warnings: list[RestoreWarning],
    taken: dict[str, str] | None = None,
    where: str = "",
    fold: Callable[[str], str] | None = None,
) -> list[str]:
    """``paths`` with each root kept and each named entry once per name (:func:`by_name`)."""
    kept = set(by_name(source, paths, warnings, taken, where, fold).values())
    out: list[str] = []
    for path in paths:
        if (not path.strip("/") or path in kept) and path not in out:
            out.append(path)
    return out


class Selection:
    """The entries at ``paths`` of ``source``, each under its own name in a virtual root."""

    def __init__(
        self,
        source: EntrySource,
        paths: list[str],
        warnings: list[RestoreWarning],
        taken: dict[str, str] | None = None,
        where: str = "",
    ) -> None:
        self.source = source
        self.top = by_name(source, paths, warnings, taken, where)

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
