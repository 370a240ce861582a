"""What the restore verbs share: the vCenter option group, guest credentials, running the job,
opening the repository.

:func:`vcenter_options` adds the vCenter options (``--vcenter`` … ``--insecure``, the same
declarations as :mod:`vmkeep.cli.vcenter_opts`) to a command in place of its ``vc`` parameter,
and hands the command one :class:`VCenterArgs`; :meth:`VCenterArgs.params` turns them into the
spec's flat vCenter keywords (folded into ``VCenterTarget``), or says which verb needs
``--vcenter``.  The vCenter is optional on the command line (``restore files`` needs one only
with ``--to-guest``).  :func:`run_restore` builds the job's spec and runs the job as the backup
verbs do: in-process with a ``LocalRuntime`` (a progress bar on the terminal), or its flow when
Prefect's settings name an API or ``--prefect`` asks.

Passwords never come from argv: vCenter passwords as in :mod:`vmkeep.cli.vcenter_opts`, guest
credentials from ``VMKEEP_GUEST_USER`` / ``VMKEEP_GUEST_PASSWORD`` or ``--guest-password-file``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from vmkeep.cli.vcenter_opts import (
    CafileOpt,
    InsecureOpt,
    PasswordBlockOpt,
    PasswordFileOpt,
    ThumbprintOpt,
    UserOpt,
    vcenter_params,
)
from vmkeep.errors import UsageError

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

#: (parameter, declaration, default) of the vCenter option group, in --help order
_GROUP: list[tuple[str, Any, Any]] = [
    ("vcenter", OptionalVCenterOpt, None),
    ("user", UserOpt, None),
    ("password_file", PasswordFileOpt, None),
    ("password_block", PasswordBlockOpt, None),
    ("cafile", CafileOpt, None),
    ("thumbprint", ThumbprintOpt, None),
    ("insecure", InsecureOpt, False),
]


@dataclass(frozen=True)
class VCenterArgs:
    """The vCenter options of one invocation."""

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
        return vcenter_params(
            self.vcenter, self.user, self.password_file, self.password_block, self.cafile,
            self.thumbprint, self.insecure,
        )


def vcenter_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the vCenter option group where it declares ``vc: VCenterArgs``."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name != "vc":
            params.append(param)
            continue
        params.extend(
            inspect.Parameter(name, param.kind, default=default, annotation=declared)
            for name, declared, default in _GROUP
        )

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        group = VCenterArgs(**{name: kwargs.pop(name) for name, _, _ in _GROUP})
        command(*args, vc=group, **kwargs)

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def run_restore(
    job: str,
    params: dict[str, Any],
    orchestrate: bool | None,
    description: str,
    json_out: bool,
) -> dict[str, Any]:
    """Run restore job ``job`` (``restore_vm``, ``restore_files`` …, a module of
    :mod:`vmkeep.jobs`) on the spec built from ``params``; returns its summary."""
    import importlib

    from vmkeep.cli.common import byte_progress
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.flows.run import run
    from vmkeep.jobs import restore_specs, specs

    ref, spec_type = restore_specs.JOBS[job.replace("_", "-")]
    spec = specs.build(spec_type, params)
    module, _, name = ref.partition(":")
    job_fn = getattr(importlib.import_module(module), name)
    with byte_progress(description, None, not json_out and not orchestrate) as advance:
        summary: dict[str, Any] = run(job_fn, spec, orchestrate, None if orchestrate else advance)
    return summary


def open_repo(url: str) -> Any:
    """Open the repository (through the shared ``open_repository`` helper when it exists)."""
    from vmkeep.cli import common

    opener = getattr(common, "open_repository", None)
    if opener is not None:
        return opener(url)
    from vmkeep.storage.repository import Repository

    return Repository.open(url)
