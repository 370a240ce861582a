"""What the restore verbs share besides the vCenter option group
(:mod:`vmkeep.cli.vcenter_opts`): guest credentials, running the job, opening the repository.

:func:`run_restore` builds the job's spec and runs the job as the backup verbs do: in-process
with a ``LocalRuntime`` (a progress bar on the terminal), or its flow when Prefect's settings
name an API or ``--prefect`` asks.

Guest credentials come from ``VMKEEP_GUEST_USER`` / ``VMKEEP_GUEST_PASSWORD`` or
``--guest-password-file``, never from argv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vmkeep.cli.common import given_location, given_path
from vmkeep.cli.spec_options import spec_from_options

GuestUserOpt = Annotated[
    str | None, typer.Option("--guest-user", help="Guest user (default: VMKEEP_GUEST_USER).")
]
GuestPasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--guest-password-file", parser=given_path,
                 help="File holding the guest password (else the env)."),
]
YaraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--yara",
        parser=given_location,
        help="Secure restore: scan the point's files with these YARA rules (file or folder, "
        "repeatable) first; a match refuses the restore (exit 13).",
    ),
]


def check_stdout_options(
    what: str, json_out: bool, orchestrate: bool | None, *, refused: str, given: bool,
    because: str,
) -> None:
    """``--to -`` writes ``what`` on standard output: nothing else may write there (no
    ``--json``), the job runs in this process (no ``--prefect``), and the options ``refused``
    names (``given`` when one of them was) have nothing to act on, ``because``.  Usage errors
    (exit 2), before anything is opened."""
    from vmkeep.errors import UsageError

    if json_out:
        raise UsageError(f"--to - writes {what} to standard output: no --json with it")
    if orchestrate:
        raise UsageError("--to - streams from this process: not with --prefect")
    if given:
        raise UsageError(f"--to - writes {what} as a stream: no {refused} with it ({because})")


def yara_rules(given: list[str] | None) -> list[str]:
    """``--yara`` as absolute paths (the job may run in another working directory)."""
    import os

    return [os.path.abspath(r) for r in given or []]


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
    from vmkeep.jobs import restore_specs

    ref, spec_type = restore_specs.JOBS[job.replace("_", "-")]
    spec = spec_from_options(spec_type, params)
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
