"""vmkeep's settings from the environment: every ``VMKEEP_*`` variable, typed, in one object.

:func:`settings` returns a :class:`~vmkeep.settings_model.Settings` (a frozen pydantic model;
its fields, defaults and meanings are in :mod:`vmkeep.settings_model`) read from the process
environment; each field ``x`` is the variable ``VMKEEP_X``
(``settings().vc_user`` is ``VMKEEP_VC_USER``).  An empty variable counts as unset, and so does
one of blanks alone unless it is a secret.
The object is rebuilt whenever a ``VMKEEP_*`` variable changes (tests set them per test), and
cached otherwise, so reading a setting costs a scan of the environment.  A malformed value
(``VMKEEP_LOCK_WAIT=soon``) raises :class:`vmkeep.errors.UsageError` naming the variable, never
its value (it may be a secret).  Secrets are :class:`pydantic.SecretStr`: they do not show in
``repr`` or logs.

The CLI's options that fall back to a variable (``--repo`` / ``VMKEEP_REPO``, ``--vcenter`` /
``VMKEEP_VCENTER`` …) keep typer's ``envvar=`` binding; the names are the same fields here.
The user-facing table of all variables is in ``docs/settings.md``; :func:`table` renders it from
this class, and a test keeps the two equal.

Why not pydantic-settings' ``BaseSettings``: what vmkeep needs of it (prefix, empty = unset, no
``.env`` or secrets directories) is the four lines of :func:`_values`, while importing
``pydantic_settings`` (its CLI, dotenv and cloud sources) added 0.2–0.4 s to every direct
``vmkeep`` command on this 2-core machine (``python -X importtime``; pydantic itself is already
loaded by the repository code).  Validation and conversion are pydantic's, as with
``BaseSettings``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from vmkeep.errors import UsageError

if TYPE_CHECKING:
    from vmkeep.settings_model import Settings

PREFIX = "VMKEEP_"


def _values(environ: Mapping[str, str]) -> dict[str, str]:
    """Field name → raw value of every ``VMKEEP_*`` variable of a field that is set, not empty
    — nor blanks alone, except for secrets (a password may be spaces): ``VMKEEP_TAPE_DIR=" "``
    made a folder named by a space in the current one."""
    from pydantic import SecretStr

    from vmkeep.settings_model import Settings

    out = {}
    for name, field in Settings.model_fields.items():
        value = environ.get(PREFIX + name.upper())
        secret = SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
        if value and (secret or value.strip()):
            out[name] = value
    return out


_cache: tuple[tuple[tuple[str, str], ...], Settings] | None = None
_lock = threading.Lock()


def settings() -> Settings:
    """The settings of the current environment (see the module docstring)."""
    global _cache
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX)))
    cached = _cache
    if cached is not None and cached[0] == key:
        return cached[1]
    from pydantic import ValidationError

    from vmkeep.settings_model import Settings

    try:
        fresh = Settings.model_validate(_values(os.environ))
    except ValidationError as exc:
        errors = [(PREFIX + str(e["loc"][0]).upper(), e["msg"]) for e in exc.errors() if e["loc"]]
        names = sorted({name for name, _ in errors})
        why = "; ".join(f"{name}: {msg}" for name, msg in errors)
        raise UsageError(f"invalid {', '.join(names)} ({why})") from None
    with _lock:
        _cache = (key, fresh)
    return fresh


def config_dir() -> Path:
    """``VMKEEP_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/vmkeep``, else ``~/.config/vmkeep``: the
    licence and the tape library definitions live there (each may be moved on its own)."""
    if found := settings().config_dir:
        return found.expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "vmkeep"


def table() -> str:
    """The Markdown table of every variable: name, default, meaning."""
    from vmkeep.settings_model import Settings

    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f"`{field.default!s}`".replace("True", "1")
        rows.append(f"| `{PREFIX}{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows) + "\n"
