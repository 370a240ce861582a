"""Which fsspec options are secrets, so that they never travel as Prefect flow parameters.

Prefect stores every flow-run parameter in its API and database, shows it in the UI and copies
it into child runs.  Secrets must therefore reach the code that needs them another way: the
environment or a file on the machine that runs the flow, or a Prefect Secret block read at run
time (see docs/security.md, "Secrets and Prefect").

Contract: :func:`secret_keys` lists the keys of an options mapping (nested mappings included,
as ``outer.inner``) whose name marks a secret (password, passphrase, secret, token, key …);
:func:`refuse_secrets` raises :class:`~vmkeep.errors.InputError` naming them (never their
values).  Key *file names* (``key_filename``, ``client_cert`` …) are paths, not secrets.
:func:`refuse_url_password` refuses a URL carrying a password (``sftp://user:pw@host/…``):
it would be a parameter, a log line and a process argument.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from vmkeep.errors import InputError

#: Option names that hold a secret value (fsspec/paramiko/smbprotocol/s3fs/adlfs/gcsfs spellings).
_SECRET = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|credential|^key$|^pkey$|account_key|"
    r"connection_string|private_key$|^auth$)",
    re.IGNORECASE,
)


def secret_keys(options: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """Keys of ``options`` (dotted for nested mappings) that name a secret."""
    found: list[str] = []
    for key, value in (options or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.extend(secret_keys(value, name + "."))
        elif _SECRET.search(str(key)) and value not in (None, "", False):
            found.append(name)
    return found


def refuse_secrets(options: Mapping[str, Any] | None, what: str) -> None:
    """Raise :class:`InputError` if ``options`` (the parameter ``what``) holds a secret."""
    keys = secret_keys(options)
    if keys:
        raise InputError(
            f"{what} holds secret option(s) {', '.join(sorted(keys))}: Prefect would store them "
            "with the run; give them in the environment or a file on the worker, or as a Secret "
            "block (see docs/security.md)"
        )


def refuse_url_password(url: str | None, what: str) -> None:
    """Raise :class:`InputError` if ``url`` (the parameter ``what``) embeds a password."""
    if not url or "://" not in url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        raise InputError(
            f"{what}: a password in the URL would be recorded and shown; remove it and give "
            "it in the environment or a file (see docs/security.md)"
        )

