"""Every typed error's message template is one line: ``VmkeepError.get_message`` formats the
first line of the class docstring, so a template wrapped onto a second line was cut off in the
middle (``PermissionDenied`` said "… (`vmkeep doctor` lists")."""

from __future__ import annotations

import importlib
import pkgutil

import vmkeep
from vmkeep.errors import VmkeepError


def _all_error_classes() -> set[type[VmkeepError]]:
    for module in pkgutil.walk_packages(vmkeep.__path__, "vmkeep."):
        if module.name.endswith("__main__") or ".lab.esxsim" in module.name:
            continue
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as exc:  # a plugin loaded by another program (nbdkit)
            if (exc.name or "").startswith("vmkeep"):
                raise
    found: set[type[VmkeepError]] = set()
    todo = [VmkeepError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_message_template_is_one_line() -> None:
    classes = _all_error_classes()
    assert len(classes) > 100  # the walk found the package's errors
    wrapped = []
    for cls in classes:
        lines = (cls.__doc__ or "").strip().splitlines()
        if len(lines) > 1 and lines[1].strip():
            wrapped.append(f"{cls.__module__}.{cls.__name__}")
    assert not wrapped, f"message templates continued on a second line: {wrapped}"
