"""Options shared by the restore verbs: vCenter connection and guest credentials.

Passwords never come from argv: the vCenter password from ``--password-file`` or the
environment (``VMKEEP_VC_PASSWORD`` / ``VMKEEP_VC_PASSWORD_FILE``), guest credentials from
``VMKEEP_GUEST_USER`` / ``VMKEEP_GUEST_PASSWORD`` or ``--guest-password-file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vmkeep.errors import UsageError

VCenterOpt = Annotated[
    str | None,
    typer.Option("--vcenter", envvar="VMKEEP_VCENTER", help="vCenter / ESXi URL or host."),
]
UserOpt = Annotated[
    str | None, typer.Option("--user", help="vCenter user (default: VMKEEP_VC_USER).")
]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--password-file", help="File holding the vCenter password (else the env)."),
]
CafileOpt = Annotated[Path | None, typer.Option("--cafile", help="CA bundle (PEM) to verify TLS.")]
ThumbprintOpt = Annotated[
    str | None, typer.Option("--thumbprint", help="Pin the server certificate (SHA-256).")
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify TLS (not recommended).")
]
GuestUserOpt = Annotated[
    str | None, typer.Option("--guest-user", help="Guest user (default: VMKEEP_GUEST_USER).")
]
GuestPasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--guest-password-file", help="File holding the guest password (else the env)."),
]


def vcenter_params(
    vcenter: str | None,
    user: str | None,
    password_file: Path | None,
    cafile: Path | None,
    thumbprint: str | None,
    insecure: bool,
) -> dict[str, Any]:
    """Flow parameters naming the vCenter (no secrets: those stay in files and the env)."""
    if not vcenter:
        raise UsageError("no vCenter given: use --vcenter or set VMKEEP_VCENTER")
    if thumbprint and insecure:
        raise UsageError("--thumbprint and --insecure exclude each other")
    return {
        "vcenter": vcenter,
        "user": user,
        "password_file": str(password_file) if password_file else None,
        "cafile": str(cafile) if cafile else None,
        "thumbprint": thumbprint,
        "insecure": insecure,
    }


def open_repo(url: str) -> Any:
    """Open the repository (through the shared ``open_repository`` helper when it exists)."""
    from vmkeep.cli import common

    opener = getattr(common, "open_repository", None)
    if opener is not None:
        return opener(url)
    from vmkeep.storage.repository import Repository

    return Repository.open(url)
