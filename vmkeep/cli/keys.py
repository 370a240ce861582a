"""``vmkeep key list|add|remove``: passphrases of an encrypted repository.

The current password comes from ``VMKEEP_PASSWORD`` / ``_FILE`` / ``_COMMAND``; the new one for
``add`` from ``VMKEEP_NEW_PASSWORD`` or ``VMKEEP_NEW_PASSWORD_FILE`` (never argv).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    console_out,
    emit_json,
    open_repository,
    setup_logging,
    visible,
)
from vmkeep.cli.main import app
from vmkeep.errors import UsageError
from vmkeep.settings import settings

if TYPE_CHECKING:
    from vmkeep.storage.repository import Repository

key_app = typer.Typer(
    help="Manage the passphrases of an encrypted repository.", no_args_is_help=True
)
app.add_typer(key_app, name="key")


def _encrypted(repo: str) -> Repository:
    repository: Repository = open_repository(repo)
    if repository.cipher is None:
        raise UsageError("this repository is not encrypted (create one with `init --encrypt`)")
    return repository


def new_password() -> str:
    """The new passphrase from ``VMKEEP_NEW_PASSWORD`` or ``VMKEEP_NEW_PASSWORD_FILE``."""
    from vmkeep.storage.crypto import read_password_file

    value, path = settings().secret("new_password"), settings().new_password_file
    if not value and path:
        value = read_password_file(str(path), "VMKEEP_NEW_PASSWORD_FILE")
    if not value:
        raise UsageError("set VMKEEP_NEW_PASSWORD or VMKEEP_NEW_PASSWORD_FILE")
    return value


@key_app.command("list")
def key_list(repo: RepoOpt = "", json_out: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """List key files (the current one is marked)."""
    from vmkeep.storage.crypto import list_keys

    setup_logging(verbose)
    repository = _encrypted(repo)
    keys = list_keys(repository.raw_backend, repository.key_id)
    if json_out:
        emit_json({"keys": keys})
        return
    for k in keys:
        mark = "*" if k["current"] else " "
        console_out.print(
            f"{mark} {k['id']}  {visible(k['created'])}  {visible(k['hostname'])}", markup=False
        )


@key_app.command("add")
def key_add(repo: RepoOpt = "", json_out: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Add a passphrase (VMKEEP_NEW_PASSWORD) that opens the repository too."""
    from vmkeep.storage.crypto import add_key

    setup_logging(verbose)
    repository = _encrypted(repo)
    assert repository.master is not None
    password = new_password()
    with repository.lock("exclusive", command="key add"):  # backups wait (bounded) meanwhile
        key_id = add_key(repository.raw_backend, repository.master, password)
    if json_out:
        emit_json({"id": key_id})
    else:
        console_err.print(f"added key {key_id}")


@key_app.command("remove")
def key_remove(
    key_id: Annotated[str, typer.Argument(help="Key id or unique prefix.")],
    repo: RepoOpt = "",
    verbose: VerboseOpt = 0,
) -> None:
    """Remove a key file (not the one in use, never the last)."""
    from vmkeep.storage.crypto import remove_key

    setup_logging(verbose)
    repository = _encrypted(repo)
    with repository.lock("exclusive", command="key remove"):  # backups wait (bounded)
        remove_key(repository.raw_backend, key_id, repository.key_id)
    console_err.print(f"removed key {key_id}")
