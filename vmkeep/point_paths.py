"""Paths a user gives inside a restore point (``POINT:/etc/hosts`` of a file point,
``POINT:disk0-p1/etc/hosts`` of an image point): one reading for every command.

:func:`normalize` returns the ``/a/b`` form: empty components and ``.`` dropped (``//a/./b/``
is ``/a/b``); ``..`` and NUL refused with a :class:`~vmkeep.errors.UsageError` (exit 2), never
resolved — a path names an entry of the point, not a walk through it.
"""

from __future__ import annotations

from vmkeep.errors import UsageError


def normalize(path: str) -> str:
    """``/a/b`` form of a user-given path inside a point; ``..`` is refused, not resolved."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in path:
        raise UsageError(f"path {path!r}: '..' and NUL are not allowed inside a restore point")
    return "/" + "/".join(parts)
