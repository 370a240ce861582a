"""Names for the values of options and arguments in ``--help``, as restic's and borg's users
read them: ``--exclude PATTERN``, ``--keep-last N``, ``--password-file FILE``, ``{POINT}``.

Typer names a value by its Python type (``--exclude <list[str]>``, ``--keep-last <int
range>``, ``{point}``), which tells a user nothing.  :func:`name_values` gives every option and
argument of a command tree that has no ``metavar`` of its own one derived from what it is:

* numbers (``int``, ``float``, their ranges and lists): ``N`` (the help says the unit);
* an option whose name ends in ``-file`` (``--password-file``; and ``--cafile``): ``FILE``;
* the options of :data:`NAMED` (repositories, durations, patterns, scripts);
* otherwise the parameter's own name in capitals (``--resource-pool RESOURCE_POOL``,
  ``ref`` -> ``REF``), as ``argparse`` does.

Choices keep their list (``[auto|nbd|hotadd]``) and flags take no value.  Only the names shown
change: parsing, defaults and values stay as they are.  Typer's parameters (typer 0.2x carries
its own copy of click, and keeps each parameter's annotation in ``type_descriptor``) are read
by their attributes; this module imports neither click nor typer (it runs on every start-up).
"""

from __future__ import annotations

from typing import Any, get_args

#: Long option -> the name of its value, where the option's own name would not say it.
NAMED: dict[str, str] = {
    "--repo": "REPO",
    "--to-repo": "REPO",
    "--from-repo": "REPO",
    "--also": "REPO",
    "--exclude": "PATTERN",
    "--grace": "DURATION",
    "--keep-within": "DURATION",
    "--undelete-since": "TIME",
    "--pre-freeze": "SCRIPT",
    "--post-thaw": "SCRIPT",
    "--post-backup": "SCRIPT",
    "--yara": "RULES",
    "--rules": "RULES",
    "--listen": "ADDRESS",
    "--vcenter": "HOST",
    "--set": "NAME=JSON",
    "--to": "PATH",
    "--to-guest": "VM:DIR",
    "--read-data-subset": "SUBSET",
    "--max-unused": "LIMIT",
    "--catalog": "FILE",
    "--inventory": "FILE",
    "--changed-extents": "FILE",
    "--screenshot": "FILE",
    "--home": "DIR",
    "--socket": "PATH",
    "--api-url": "URL",
    "--changer": "URL",
    "--drive": "URL",
    "--tape-library": "NAME:SLOTS",
    "--password-block": "BLOCK",
    "--repo-san": "REPO",
    "--nfs-address": "ADDRESS",
    "--nfs-client": "ADDRESS",
    "--activate": "POOL",
    "--worker": "POOL",
    "--expect": "REGEX",
    "--remote-device": "NAME",
    "--datastore-mount": "DATASTORE=PATH",
    "--vms": "PATTERN",
}


def _value_type(param: Any) -> tuple[Any, bool]:
    """``(type of one value, is a choice)`` from typer's description of ``param``; a list's or
    tuple's element type."""
    described = getattr(param, "type_descriptor", None)
    if described is None:  # not typer's (a plain click parameter): named by its name
        return None, False
    annotation = described.annotation
    if described.is_list or described.is_tuple:
        annotation = (get_args(annotation) or (None,))[0]
    return annotation, bool(described.is_choice)


def value_name(param: Any) -> str | None:
    """The name :func:`name_values` gives ``param``'s value, or ``None`` to leave it as it is
    (its own ``metavar``, a choice, a flag)."""
    value_type, choice = _value_type(param)
    if param.metavar is not None or choice:
        return None
    option = param.param_type_name == "option"  # typer's options are no click.Option
    if option and (getattr(param, "is_flag", False) or getattr(param, "count", False)):
        return None
    if value_type in (int, float):
        return "N"
    if option:
        long = max(param.opts, key=len)
        if long in NAMED:
            return NAMED[long]
        if long.endswith("-file") or long == "--cafile":
            return "FILE"
        return long.lstrip("-").replace("-", "_").upper()
    return str(param.name or "value").upper()


def _no_type(ctx: object = None) -> None:
    return None


def name_values(command: Any) -> Any:
    """Give every parameter of ``command`` and of its registered subcommands its
    :func:`value_name` (in place; returns ``command``)."""
    for param in command.params:
        if (name := value_name(param)) is not None:
            param.metavar = name
        if param.param_type_name == "argument":  # typer adds "<str>" after an argument's name
            setattr(param, "display_type_rich", _no_type)  # noqa: B010 - a method, per object
    for sub in getattr(command, "commands", {}).values():  # typer's groups are no click.Group
        name_values(sub)
    return command
