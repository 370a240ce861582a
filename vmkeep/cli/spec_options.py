"""Job specs built from a verb's options: a value the spec refuses is a usage error (exit 2)
that names the option it came from (``--name: holds a control character …``), not a job's
"Invalid BackupFilesSpec: name: …" (exit 14, the error of a spec sent by a deployment or an
API caller, where no option exists)."""

from __future__ import annotations

from typing import Any, TypeVar

S = TypeVar("S")


def spec_from_options(spec_type: type[S], params: dict[str, Any]) -> S:
    """:func:`vmkeep.jobs.specs.build` of ``params`` — the running verb's option values —, or
    :class:`~vmkeep.errors.UsageError` naming each refused value by its option (or argument);
    a field no option of the verb is called like keeps its spec name."""
    from vmkeep.errors import UsageError
    from vmkeep.jobs.specs import InvalidSpec, build

    try:
        return build(spec_type, params)  # type: ignore[type-var]
    except InvalidSpec as exc:
        if not exc.problems:
            raise
        names = _shown_names()
        raise UsageError("; ".join(
            _named(field.split(".")[0], problem, names) for field, problem in exc.problems
        )) from None


def _named(field: str, problem: str, names: dict[str, str]) -> str:
    if field == "spec":  # the options together (a model's own check): its words say which
        return problem
    shown = names.get(field) or names.get(field.removesuffix("s")) or field  # exclude_disks
    return f"{shown}: {problem}"


def _shown_names() -> dict[str, str]:
    """Parameter name -> how the running verb's help shows it (``--name``, ``SOURCE``)."""
    try:
        from typer._click.globals import get_current_context  # typer carries its own click
    except ImportError:  # another typer: the fields keep their spec names
        return {}
    ctx = get_current_context(silent=True)
    if ctx is None:  # the command was not run by the command line (a test's direct call)
        return {}
    shown = {}
    for param in ctx.command.params:
        if param.name is None:
            continue
        if param.param_type_name == "option":
            shown[param.name] = max(param.opts, key=len)
        else:
            shown[param.name] = param.metavar or param.name.upper()
    return shown
