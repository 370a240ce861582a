"""Options of the restore verbs beyond :mod:`vmkeep.cli.vcenter_opts`: an optional vCenter
(only ``restore files --to-guest`` needs one), guest credentials, opening the repository.

Passwords never come from argv: guest credentials from ``VMKEEP_GUEST_USER`` /
``VMKEEP_GUEST_PASSWORD`` or ``--guest-password-file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

OptionalVCenterOpt = Annotated[
    str | None,
    typer.Option("--vcenter", envvar="VMKEEP_VCENTER", help="vCenter / ESXi URL or host."),
]
GuestUserOpt = Annotated[
    str | None, typer.Option("--guest-user", help="Guest user (default: VMKEEP_GUEST_USER).")
]
GuestPasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--guest-password-file", help="File holding the guest password (else the env)."),
]


def open_repo(url: str) -> Any:
    """Open the repository (through the shared ``open_repository`` helper when it exists)."""
    from vmkeep.cli import common

    opener = getattr(common, "open_repository", None)
    if opener is not None:
        return opener(url)
    from vmkeep.storage.repository import Repository

    return Repository.open(url)
