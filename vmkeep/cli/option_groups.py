"""Option groups: one command parameter that the command line spells as several options.

:func:`option_group` turns a command's parameter (``vc: VCenterTarget``, ``nfs: NfsExport``…)
into the options of its group in ``--help`` and on the command line, and hands the command the
one value built from them — so each group is declared once and every verb that takes it says
so with one parameter.  Typer sees the rewritten signature; the command never sees the options.

Imported by verb modules at registration: the standard library only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

#: an option of a group: (parameter name, ``Annotated`` typer declaration, default)
Option = tuple[str, Any, Any]


def option_group(
    name: str,
    options: Callable[[inspect.Parameter], list[Option]],
    build: Callable[[dict[str, Any]], Any],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator replacing the command's parameter ``name`` by ``options(parameter)`` (the
    parameter is given so that its default can decide, e.g. a required option when it has
    none) and calling the command with ``name=build({option: value, …})``."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        names: list[str] = []
        for param in signature.parameters.values():
            if param.name != name:
                params.append(param)
                continue
            group = options(param)
            names = [option for option, _, _ in group]
            params.extend(inspect.Parameter(option, param.kind, default=default,
                                            annotation=declared)
                          for option, declared, default in group)
        if not names:
            raise TypeError(f"{command.__name__} has no parameter {name!r}")

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            kwargs[name] = build({option: kwargs.pop(option) for option in names})
            command(*args, **kwargs)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
