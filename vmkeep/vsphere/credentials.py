"""vSphere credentials that never print their password.

:class:`Credentials` hides the password from ``repr``, ``str``, pickling-by-accident into logs
and f-strings; the only way to the password is :meth:`Credentials.reveal`, called by the session
at login time.  Loaders read the environment (``VMKEEP_VC_USER``/``VMKEEP_VC_PASSWORD``) or a
password file (first line, mode checked); never argv.  The Prefect Secret block loader lives in
``vmkeep.tasks`` (this layer knows no Prefect).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NoReturn

from vmkeep.errors import InputError
from vmkeep.settings import settings

ENV_USER = "VMKEEP_VC_USER"
ENV_PASSWORD = "VMKEEP_VC_PASSWORD"
ENV_PASSWORD_FILE = "VMKEEP_VC_PASSWORD_FILE"


class Credentials:
    """A user name and a password; the password is shown only by :meth:`reveal`."""

    __slots__ = ("_password", "user")

    def __init__(self, user: str, password: str) -> None:
        if not user:
            raise InputError("empty vSphere user name")
        self.user = user
        self._password = password

    def reveal(self) -> str:
        """The clear-text password, for the login call only."""
        return self._password

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.user, self._password) == (other.user, other._password)

    def __hash__(self) -> int:
        return hash(self.user)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Credentials are not picklable (they would leak into artifacts)")

    def __getstate__(self) -> NoReturn:
        raise TypeError("Credentials are not picklable")

    def __deepcopy__(self, memo: dict[int, Any]) -> Credentials:
        return Credentials(self.user, self._password)


def from_env(environ: dict[str, str] | None = None, user: str | None = None) -> Credentials:
    """Read ``VMKEEP_VC_USER`` and ``VMKEEP_VC_PASSWORD`` (or ``VMKEEP_VC_PASSWORD_FILE``).

    ``user`` (``--user``) wins over ``VMKEEP_VC_USER``; only the password must then come from
    the environment.
    """
    if environ is None:  # the process environment, through the one settings object
        env = settings()
        env_user, password = env.vc_user, env.secret("vc_password")
        password_file: str | Path | None = env.vc_password_file
    else:
        env_user, password = environ.get(ENV_USER), environ.get(ENV_PASSWORD)
        password_file = environ.get(ENV_PASSWORD_FILE) or None
    user = user or env_user or ""
    if not user:
        raise InputError(f"no vSphere user: pass --user or set {ENV_USER}")
    if password is not None:
        return Credentials(user, password)
    if password_file:
        return from_file(user, password_file)
    raise InputError(f"neither {ENV_PASSWORD} nor {ENV_PASSWORD_FILE} is set")


def from_file(user: str, path: str | os.PathLike[str], *, strict_mode: bool = True) -> Credentials:
    """Read the password from the first line of ``path`` (trailing newline stripped).

    With ``strict_mode`` the file must not be readable by group or others (like ssh keys).
    """
    p = Path(path)
    try:
        st = p.stat()
        if strict_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"password file {p} is accessible by group/others (chmod 600)")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read password file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"password file {p}: its first line is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise InputError(f"password file {p}: its first line is empty")
    return Credentials(user, lines[0])
