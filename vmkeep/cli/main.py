"""The ``vmkeep`` command: a thin layer that parses, calls a flow or library function, and prints.

Every verb lives in its own module (``cli/<verb>.py``) and registers itself on :data:`app` or on
one of the verb groups below; this module only wires them together and maps errors to exit codes
(see :mod:`vmkeep.errors`).

Registration is lazy: :func:`main` imports only the module that registers the verb named on the
command line (:data:`VERB_MODULES`), so ``vmkeep list`` does not pay for the imports of ``backup
vm``, the licence checks or the tape verbs.  Anything else (``--help``, a verb not in the table,
no verb) imports every module, as before.  Code that drives :data:`app` directly (``CliRunner``,
the reference generator) calls :func:`register_all` first; :func:`root_command` is the command as
users see it (values named, :mod:`vmkeep.cli.value_names`).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Annotated, Any

import typer

from vmkeep.cli.common import console_err, run_guarded
from vmkeep.errors import Terminated

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


def _show_version(value: bool) -> None:
    """``vmkeep --version``: the program's version and the on-disk formats it writes."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    from vmkeep.storage.config import REPO_VERSION
    from vmkeep.tape.label import VERSION as TAPE_VERSION

    try:
        mine = version("vmkeep")
    except PackageNotFoundError:  # a source tree without installed metadata
        mine = "unknown"
    typer.echo(f"vmkeep {mine} (repository format {REPO_VERSION}, tape format {TAPE_VERSION}; "
               f"Python {sys.version.split()[0]})")
    raise typer.Exit()


def _limit(flag: str, what: str) -> Any:
    """A root bandwidth option (KiB/s, at least 1), whose variable is ``VMKEEP_`` + the flag's
    name (``--limit-upload``: ``VMKEEP_LIMIT_UPLOAD``)."""
    variable = "VMKEEP_" + flag.removeprefix("--").replace("-", "_").upper()
    return typer.Option(flag, metavar="KIB/S", min=1, help=f"{what} (same as {variable}).")


@app.callback()
def _root(
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Neither use nor write the local index cache (same as VMKEEP_NO_CACHE=1).",
        ),
    ] = False,
    limit_upload: Annotated[
        int | None, _limit("--limit-upload", "Send at most this many KiB/s to repositories")
    ] = None,
    limit_download: Annotated[
        int | None, _limit("--limit-download", "Read at most this many KiB/s from repositories")
    ] = None,
    limit_read: Annotated[
        int | None,
        _limit("--limit-read",
               "Read the disks being backed up (VM disks, images) at most this many KiB/s"),
    ] = None,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version,
            help="Print vmkeep's version and the formats it writes, then exit.",
        ),
    ] = False,
) -> None:
    """Backup and recovery for VMware vSphere."""
    if no_cache:
        os.environ["VMKEEP_NO_CACHE"] = "1"  # read by vmkeep.storage.index_cache
    # read by vmkeep.storage.rate_limit; the environment carries them into Prefect's flow runs
    limits = {"UPLOAD": limit_upload, "DOWNLOAD": limit_download, "READ": limit_read}
    for direction, kib in limits.items():
        if kib is not None:
            os.environ[f"VMKEEP_LIMIT_{direction}"] = str(kib)


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
    "diff",
    "mount",
    "verify",
    "instant_restore",
    "maintenance",
    "protect",
    "repair",
    "copy",
    "keys",
    "object_lock",
    "sweep",
    "doctor",
    "license",
    "lab",
    "serve",
    "notify",
    "rpo",
    "tape",
)


#: The module that registers each verb: top-level verbs and groups by name, the verbs of
#: ``backup`` and ``restore`` (one module each) as ``"GROUP VERB"``.  A verb missing here still
#: works (every module is then imported); a wrong entry would hide a verb, which
#: ``tests/cli/test_startup_imports.py`` rules out by comparing the table with the registrations.
VERB_MODULES = {
    "init": "repo_cmds",
    "list": "repo_cmds",
    "check": "repo_cmds",
    "ls": "browse",
    "find": "browse",
    "diff": "diff",
    "mount": "mount",
    "export": "verify",
    "verify": "verify",
    "instant-restore": "instant_restore",
    "forget": "maintenance",
    "prune": "maintenance",
    "stats": "maintenance",
    "unlock": "maintenance",
    "protect": "protect",
    "unprotect": "protect",
    "repair": "repair",
    "key": "keys",
    "object-lock": "object_lock",
    "sweep": "sweep",
    "doctor": "doctor",
    "license": "license",
    "lab": "lab",
    "serve": "serve",
    "notify": "notify",
    "rpo": "rpo",
    "copy": "copy",
    "tape": "tape",
    "backup image": "backup_image",
    "backup vm": "backup_vm",
    "backup files": "backup_files",
    "restore image": "restore_image",
    "restore files": "restore_files",
    "restore vm": "restore_vm",
    "restore disk": "restore_disk",
}
_GROUPS_BY_VERB = ("backup", "restore")
#: Options of ``vmkeep`` itself, before the verb (:func:`_root`): flags, and those taking a value.
_ROOT_FLAGS = ("--no-cache",)
_ROOT_VALUED = ("--limit-upload", "--limit-download", "--limit-read")
_registered: set[str] = set()


def _import(name: str) -> None:
    if name in _registered:
        return
    try:
        importlib.import_module(f"vmkeep.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"vmkeep.cli.{name}":
            raise
    _registered.add(name)


def register_all() -> None:
    """Import every command module, registering every verb on :data:`app`, in help order —
    whatever was imported before (a verb run in this process registers its module first)."""
    for name in COMMAND_MODULES:
        _import(name)
    for typer_app in (app, backup_app, restore_app):
        typer_app.registered_commands.sort(key=lambda info: _help_rank(info.callback))
    app.registered_groups.sort(key=lambda info: _group_rank(info.typer_instance))


def _help_rank(callback: Any) -> int:
    module = str(getattr(callback, "__module__", "")).rsplit(".", 1)[-1]
    return COMMAND_MODULES.index(module) if module in COMMAND_MODULES else len(COMMAND_MODULES)


def _group_rank(group: typer.Typer | None) -> int:
    if group is backup_app or group is restore_app or group is None:
        return -1  # defined here, first, as before
    commands = group.registered_commands or [
        c for g in group.registered_groups if g.typer_instance for c in
        g.typer_instance.registered_commands
    ]
    return min((_help_rank(c.callback) for c in commands), default=len(COMMAND_MODULES))


def verb_module(argv: list[str]) -> str | None:
    """The module registering the verb ``argv`` names, or ``None`` (help, unknown verb, an
    option before the verb): then every module is needed."""
    words: list[str] = []
    value_next = False
    for arg in argv:
        if value_next:  # the value of a root option (`--limit-upload 10240`)
            value_next = False
            continue
        if not words and (arg in _ROOT_FLAGS or arg.split("=")[0] in _ROOT_VALUED):
            value_next = arg in _ROOT_VALUED
            continue
        if arg.startswith("-"):
            return None if not words else VERB_MODULES.get(words[0])
        words.append(arg)
        if len(words) == 2 or words[0] not in _GROUPS_BY_VERB:
            break
    if not words:
        return None
    key = " ".join(words) if words[0] in _GROUPS_BY_VERB else words[0]
    return VERB_MODULES.get(key)


def register_for(argv: list[str]) -> None:
    """Register what ``argv`` needs: the one module of its verb when known, else everything."""
    name = verb_module(argv)
    if name is None:
        register_all()
    else:
        _import(name)


def root_command() -> Any:
    """The click command of :data:`app` as users see it: every value named
    (:func:`vmkeep.cli.value_names.name_values`); only the verbs registered so far."""
    from vmkeep.cli.value_names import name_values

    return name_values(typer.main.get_command(app))


def _run() -> Any:
    register_for(sys.argv[1:])
    return root_command()(standalone_mode=False)


#: Signals that stop a command the way Ctrl-C does (:class:`vmkeep.errors.Terminated`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """SIGTERM and SIGHUP handled like Ctrl-C for one CLI run (see :meth:`install`)."""

    def __init__(self) -> None:
        self.received: Terminated | None = None
        self._replaced: dict[int, Any] = {}

    def install(self) -> None:
        """Make SIGTERM and SIGHUP raise :class:`~vmkeep.errors.Terminated` in the main thread,
        so a stopped command cleans up as after Ctrl-C: snapshots released, locks given back,
        the job report sent; the exit code is ``128 + signum`` (typer and click turn the
        exception into their own exit 130 on its way out: :attr:`received` keeps the truth).
        Only the first signal raises: a second one while the cleanup runs is ignored (it would
        cut the cleanup short; SIGKILL remains for that).  Commands that serve until stopped
        (``mount``, ``export``, ``serve``) install their own handlers for their run.  Outside
        the main thread (the CLI called in-process by a test's thread) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._replaced = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.received is not None:
            return
        self.received = Terminated(signum)
        raise self.received

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced (an in-process caller keeps its own)."""
        for sig, handler in self._replaced.items():
            signal.signal(sig, handler)
        self._replaced = {}


def _held_locks() -> frozenset[Any]:
    """The repository locks this process holds (none unless the lock module was loaded)."""
    locks = sys.modules.get("vmkeep.storage.locks")
    return locks.unreleased() if locks is not None else frozenset()


def _release_locks_since(held: frozenset[Any]) -> None:
    """Give back the locks the command left to its repositories (reader leases) while every
    target can still be reached: see :func:`vmkeep.storage.locks.release_since`."""
    locks = sys.modules.get("vmkeep.storage.locks")
    if locks is not None:
        locks.release_since(held)


def main(*, fast_exit: bool = False) -> None:
    """Run the command line in ``sys.argv`` and exit with its code (``SystemExit``).

    ``fast_exit`` only for the process's own entry point (:func:`console_main`): after an
    orchestrated run it ends the process with ``os._exit`` once every exit hook has run —
    a caller that runs the CLI in-process (tests) must keep its own exit status."""
    from vmkeep.cli import fast_exit as quick
    from vmkeep.cli.stdout_guard import guarded_stdout

    if fast_exit:
        quick.install()
    held = _held_locks()
    stops = StopSignals()
    stops.install()
    try:
        with guarded_stdout():
            code = run_guarded(_run)
    except KeyboardInterrupt:
        code = 130
        if stops.received is None:
            console_err.print("interrupted")
    finally:
        _release_locks_since(held)
        stops.restore()
    if stops.received is not None:  # whatever typer made of it on the way out
        console_err.print(f"terminated by {stops.received.signame}")
        code = stops.received.exit_code
    if fast_exit:
        quick.leave(code)
    sys.exit(code)


def console_main() -> None:
    """The ``vmkeep`` console script: :func:`main`, skipping the interpreter's teardown after
    an orchestrated run (:mod:`vmkeep.cli.fast_exit`)."""
    main(fast_exit=True)
