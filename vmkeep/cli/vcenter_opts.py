"""The vCenter option group every vCenter-facing verb shares (``backup vm``, ``sweep``,
``doctor``, ``instant-restore``, ``restore vm`` …), and the ``--datastore-mount`` option.

:func:`vcenter_options` adds ``--vcenter``, ``--user``, ``--password-file``,
``--password-block``, ``--cafile``, ``--thumbprint`` and ``--insecure`` to a command in place of
its ``vc`` parameter and hands the command one :class:`VCenterArgs`.  ``vc`` without a default
makes ``--vcenter`` required on the command line (click's "Missing option"); with the default
``VCenterArgs()`` it is optional and :meth:`VCenterArgs.params` says which verb needs it.
:meth:`VCenterArgs.params` turns the group into the specs' flat vCenter keywords (folded into
``VCenterTarget``).

Passwords never come from argv: ``--password-file`` or ``VMKEEP_VC_PASSWORD`` (or
``VMKEEP_VC_PASSWORD_FILE``), or a Prefect Secret block with ``--password-block``.

Imported by verb modules at registration: typer and the standard library only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer

from vmkeep.errors import UsageError

_VCENTER = typer.Option("--vcenter", envvar="VMKEEP_VCENTER", help="vCenter or ESXi URL/host.")
VCenterOpt = Annotated[str, _VCENTER]
OptionalVCenterOpt = Annotated[str | None, _VCENTER]
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
DatastoreMountOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--datastore-mount", help="DATASTORE=PATH of a locally mounted datastore (repeatable)."
    ),
]

#: (parameter, declaration, default) of the vCenter option group after ``--vcenter``, in
#: --help order
_GROUP: list[tuple[str, Any, Any]] = [
    ("user", UserOpt, None),
    ("password_file", PasswordFileOpt, None),
    ("password_block", PasswordBlockOpt, None),
    ("cafile", CafileOpt, None),
    ("thumbprint", ThumbprintOpt, None),
    ("insecure", InsecureOpt, False),
]


@dataclass(frozen=True)
class VCenterArgs:
    """The vCenter options of one invocation (the CLI's light twin of ``VCenterTarget`` in
    :mod:`vmkeep.jobs.specs`, which needs pydantic)."""

    vcenter: str | None = None
    user: str | None = None
    password_file: str | None = None
    password_block: str | None = None
    cafile: str | None = None
    thumbprint: str | None = None
    insecure: bool = False

    def params(self, needed_by: str) -> dict[str, Any]:
        """The spec's flat vCenter keywords; ``UsageError`` naming ``needed_by`` without a
        vCenter, or for ``--insecure`` with ``--cafile``/``--thumbprint``."""
        if not self.vcenter:
            raise UsageError(f"{needed_by} needs --vcenter (or VMKEEP_VCENTER)")
        if self.insecure and (self.cafile or self.thumbprint):
            raise UsageError("--insecure cannot be combined with --cafile or --thumbprint")
        return asdict(self)


def vcenter_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the vCenter option group where it declares ``vc: VCenterArgs``
    (``--vcenter`` required when ``vc`` has no default)."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name != "vc":
            params.append(param)
            continue
        vcenter = (
            ("vcenter", VCenterOpt, param.empty)
            if param.default is param.empty
            else ("vcenter", OptionalVCenterOpt, None)
        )
        params.extend(
            inspect.Parameter(name, param.kind, default=default, annotation=declared)
            for name, declared, default in (vcenter, *_GROUP)
        )
    names = ["vcenter", *(name for name, _, _ in _GROUP)]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        group = VCenterArgs(**{name: kwargs.pop(name) for name in names})
        command(*args, vc=group, **kwargs)

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def parse_datastore_mounts(values: list[str] | None) -> dict[str, str]:
    """``--datastore-mount DATASTORE=PATH`` values → {datastore: local path}; ``UsageError`` for
    a value without a name, ``=`` or path."""
    mounts = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--datastore-mount wants DATASTORE=PATH, not {value!r}")
        mounts[name] = path
    return mounts
