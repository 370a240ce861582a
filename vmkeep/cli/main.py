"""The ``vmkeep`` command: a thin layer that parses, calls a flow or library function, and prints.

Every verb lives in its own module (``cli/<verb>.py``) and registers itself on :data:`app` or on
one of the verb groups below; this module only wires them together and maps errors to exit codes
(see :mod:`vmkeep.errors`).
"""

from __future__ import annotations

import importlib
import sys

import typer

from vmkeep.cli.common import console_err, run_guarded

app = typer.Typer(
    name="vmkeep",
    help="Backup and recovery for VMware vSphere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
backup_app = typer.Typer(help="Back up a disk image, VMs, or a file tree.", no_args_is_help=True)
restore_app = typer.Typer(help="Restore disks, VMs or files.", no_args_is_help=True)
app.add_typer(backup_app, name="backup")
app.add_typer(restore_app, name="restore")

#: Modules that register commands on import, in help order.
COMMAND_MODULES = (
    "repo_cmds",
    "backup_image",
    "restore_image",
    "backup_vm",
    "backup_files",
    "restore_files",
    "restore_vm",
    "restore_disk",
    "browse",
    "mount",
    "verify",
    "instant_restore",
    "maintenance",
    "keys",
    "object_lock",
    "sweep",
    "doctor",
    "license",
    "lab",
    "serve",
    "tape",
)


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"vmkeep.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vmkeep.cli.{name}":
                raise


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        code = run_guarded(lambda: app(standalone_mode=False))
    except KeyboardInterrupt:
        console_err.print("interrupted")
        code = 130
    sys.exit(code)
