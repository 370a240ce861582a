"""VM names as vSphere's API returns them, and as users know them.

vSphere escapes three characters in an entity's ``name``: ``/`` as ``%2f``, ``\\`` as ``%5c``
and ``%`` as ``%25`` (a ``%`` that already starts such a sequence is left alone).  The vSphere
Client shows the plain name, so a VM ``SQL/prod 100%`` is ``SQL%2fprod 100%25`` to the API.
vmkeep reads VM names through :func:`vm_name`, so selections, restore point names, messages and
comparisons use the name the user sees; names sent to vSphere (``CreateVM``, ``Rename_Task``) go
plain, and vSphere escapes them itself.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"%(2[fF]|5[cC]|25)")
_PLAIN = {"2f": "/", "5c": "\\", "25": "%"}


def vm_name(raw: str) -> str:
    """The plain name of an API name (``SQL%2fprod 100%25`` → ``SQL/prod 100%``)."""
    return _ESCAPED.sub(lambda m: _PLAIN[m.group(1).lower()], raw)
