"""Bracket expressions of shell globs (``[abc]``, ``[!a-z]``) as regular-expression classes: the
one reading shared by ``vmkeep find`` patterns (:mod:`vmkeep.browse.catalog`, RE2) and exclude
patterns of file backups (:mod:`vmkeep.guestfiles.excludes`, Python's :mod:`re`).

Read as :mod:`fnmatch` reads them: ``!`` first negates; a ``]`` first (after a ``!``) is one of
the class's characters, so ``[]]`` and ``[!]]`` are classes; a ``[`` without a closing ``]`` is
an ordinary character (the caller's to escape); ``^`` first and a backslash are ordinary
characters.  Ranges are left to the regular-expression engine: a reversed one (``[z-a]``) makes
the caller's compile fail, which callers report as a usage error naming the pattern.
"""

from __future__ import annotations

import re

#: characters that mean something inside a class to :mod:`re` or RE2 beyond a glob's ``-``
_SPECIAL = re.compile(r"([\\\[\]^&~|])")


def char_class(pattern: str, i: int) -> tuple[str, int] | None:
    """The bracket expression starting at ``pattern[i]`` (a ``[``) as a regular-expression
    class, and the index just past it; ``None`` when it has no closing ``]``."""
    j = i + 1
    negate = pattern[j : j + 1] == "!"
    j += negate
    first = j
    j += pattern[j : j + 1] == "]"
    end = pattern.find("]", j)
    if end < 0:
        return None
    body = _SPECIAL.sub(r"\\\1", pattern[first:end])
    return f"[{'^' if negate else ''}{body}]", end + 1
