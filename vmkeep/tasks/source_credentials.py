"""Credentials of file-backup sources (and of guests restored through the same URL), resolved
inside the task on the machine that runs it — never passed as flow parameters.

Prefect records flow parameters in its database (see docs/security.md, "Secrets and Prefect"),
so a flow takes only *where* a secret is: ``password_file`` (a file on the worker, first line,
mode 600) or ``password_block`` (a Prefect Secret block, read at run time).  Without either, the
environment of the process running the task: ``VMKEEP_SOURCE_PASSWORD``, else
``VMKEEP_SOURCE_PASSWORD_FILE``; ``VMKEEP_SOURCE_KEY_FILE`` names an SFTP private key.

Contract: :func:`source_options` returns the fsspec options to open ``url`` with: the caller's
non-secret ``options`` plus the resolved password / key file.  Secrets in ``options`` are
refused inside a Prefect run (the parameter was recorded); an in-process caller (a job on a
``LocalRuntime``, library use) may still pass them.
"""

from __future__ import annotations

from typing import Any

from vmkeep.runtime.settings import in_prefect_run
from vmkeep.settings import settings
from vmkeep.storage.secret_options import refuse_secrets, refuse_url_password

ENV_PASSWORD = "VMKEEP_SOURCE_PASSWORD"
ENV_PASSWORD_FILE = "VMKEEP_SOURCE_PASSWORD_FILE"
ENV_KEY_FILE = "VMKEEP_SOURCE_KEY_FILE"


def refuse_secret_parameters(**params: dict[str, Any] | str | None) -> None:
    """Refuse parameters that carry a secret: URLs (strings) with an embedded password always,
    option mappings (``storage_options=…``) holding a secret-named option inside a Prefect run,
    which has recorded them (see :mod:`vmkeep.storage.secret_options`); a job run in-process
    (:class:`~vmkeep.runtime.local.LocalRuntime`, library use) may still pass them."""
    for name, value in params.items():
        if isinstance(value, str):
            refuse_url_password(value, name)
        elif in_prefect_run():
            refuse_secrets(value, name)


def _password(password_file: str | None, password_block: str | None) -> str | None:
    # imported here: flows import this module, and vcenter pulls in pyVmomi (slow to import)
    from vmkeep.tasks.vcenter import _from_block
    from vmkeep.vsphere.credentials import from_file

    if password_file:
        return from_file("source", password_file).reveal()
    if password_block:
        return _from_block(password_block, "source").reveal()
    if settings().source_password:
        return settings().secret("source_password")
    if settings().source_password_file:
        return from_file("source", settings().source_password_file or "").reveal()
    return None


def source_options(
    url: str,
    options: dict[str, Any] | None = None,
    *,
    password_file: str | None = None,
    password_block: str | None = None,
    what: str = "source_options",
) -> dict[str, Any]:
    """fsspec options for the source or guest ``url`` (see the module docstring); ``what``
    names the parameter ``options`` came from, for the refusal."""
    refuse_secret_parameters(**{what: options})
    opts = dict(options or {})
    if "://" not in url or url.startswith("file://"):
        return opts
    if "password" not in opts:
        password = _password(password_file, password_block)
        if password is not None:
            opts["password"] = password
    key_file = settings().source_key_file
    if key_file and url.startswith(("sftp://", "ssh://")) and "key_filename" not in opts:
        opts["key_filename"] = key_file
    return opts
