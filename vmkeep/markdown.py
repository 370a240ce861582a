"""Text put into markdown reports (Prefect artifacts) as it is.

:func:`literal` is for text vmkeep does not control — a VM name, a customer name, a reason a
tool printed: every character markdown could read as syntax is backslash-escaped, so a VM named
``[x](http://…)`` is not a link and ``db_*prod*`` is not emphasis, and newlines become spaces
(a name never starts a line of its own).  vmkeep's own sentences are written as markdown.
"""

from __future__ import annotations

_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!|~")


def literal(text: str) -> str:
    """``text`` as literal markdown inline text (see the module docstring)."""
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in text.replace("\n", " "))
