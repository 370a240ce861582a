"""Exclude patterns, gitignore-like, matched against paths relative to the source root.

Rules (a subset of gitignore, enough for backups):

* A pattern without a ``/`` (apart from a trailing one) matches a name at any depth:
  ``*.tmp``, ``node_modules``.
* A pattern with a ``/`` is anchored at the source root: ``/var/cache``, ``home/*/Downloads``;
  a leading ``/`` is optional.
* ``*`` and ``?`` never match ``/``; ``**`` matches any number of components (``**/x``,
  ``a/**``, ``a/**/b``); ``[...]`` is a character class as in :mod:`fnmatch`.
* A trailing ``/`` matches directories only.
* An excluded directory is not descended into.  Negation (``!``) is not supported and refused.

Matching works on text: names that are not UTF-8 are matched through ``surrogateescape``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from vmkeep.errors import UsageError
from vmkeep.globs import char_class


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    anchored: bool
    dir_only: bool


def _translate(glob: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (bracket := char_class(glob, i)) is not None:
            out.append(f"(?!/){bracket[0]}")
            i = bracket[1]
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class Excludes:
    """A compiled list of exclude patterns; ``bool(excludes)`` is False when empty."""

    def __init__(self, patterns: list[str] | tuple[str, ...] = ()) -> None:
        self.patterns = list(patterns)
        self._compiled: list[_Pattern] = []
        for raw in self.patterns:
            pat = raw.strip()
            if not pat or pat.startswith("#"):
                continue
            if pat.startswith("!"):
                raise UsageError(f"exclude pattern {raw!r}: negation is not supported")
            dir_only = pat.endswith("/")
            pat = pat.rstrip("/")
            anchored = "/" in pat
            pat = pat.lstrip("/")
            if not pat:
                raise UsageError(f"exclude pattern {raw!r} matches nothing")
            try:
                with warnings.catch_warnings():  # "possible set difference" for [a--b]: a
                    warnings.simplefilter("ignore", FutureWarning)  # range, as fnmatch reads it
                    regex = re.compile(_translate(pat) + r"\Z")
            except re.error as exc:  # a class such as [z-a]
                raise UsageError(f"exclude pattern {raw!r}: {exc}") from None
            self._compiled.append(_Pattern(regex, anchored, dir_only))

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def match(self, relpath: str, is_dir: bool) -> bool:
        """Whether ``relpath`` (``a/b``, no leading ``/``) is excluded."""
        name = relpath.rsplit("/", 1)[-1]
        for p in self._compiled:
            if p.dir_only and not is_dir:
                continue
            if p.regex.match(relpath if p.anchored else name):
                return True
        return False
