"""Options every vCenter-facing verb shares (``backup vm``, ``sweep``, ``restore vm`` …).

Passwords never come from argv: ``--password-file`` or ``VMKEEP_VC_PASSWORD`` (or
``VMKEEP_VC_PASSWORD_FILE``), or a Prefect Secret block with ``--password-block``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

VCenterOpt = Annotated[
    str, typer.Option("--vcenter", envvar="VMKEEP_VCENTER", help="vCenter or ESXi URL/host.")
]
UserOpt = Annotated[
    str | None, typer.Option("--user", envvar="VMKEEP_VC_USER", help="vSphere user name.")
]
PasswordFileOpt = Annotated[
    str | None, typer.Option("--password-file", help="File holding the vSphere password.")
]
PasswordBlockOpt = Annotated[
    str | None, typer.Option("--password-block", help="Prefect Secret block with the password.")
]
CafileOpt = Annotated[
    str | None, typer.Option("--cafile", envvar="VMKEEP_VC_CAFILE", help="CA bundle (PEM).")
]
ThumbprintOpt = Annotated[
    str | None,
    typer.Option(
        "--thumbprint",
        envvar="VMKEEP_VC_THUMBPRINT",
        help="Pin the server certificate's SHA-256 fingerprint.",
    ),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify TLS (only when asked; never default).")
]


def vcenter_params(
    vcenter: str,
    user: str | None,
    password_file: str | None,
    password_block: str | None,
    cafile: str | None,
    thumbprint: str | None,
    insecure: bool,
) -> dict[str, Any]:
    from vmkeep.errors import UsageError

    if insecure and (cafile or thumbprint):
        raise UsageError("--insecure cannot be combined with --cafile or --thumbprint")
    return {
        "vcenter": vcenter,
        "user": user,
        "password_file": password_file,
        "password_block": password_block,
        "cafile": cafile,
        "thumbprint": thumbprint,
        "insecure": insecure,
    }
