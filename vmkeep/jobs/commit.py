"""Committing a restore point: the one step never retried, by a step retry or a run retry.

The commit writes the manifest last, so an interrupted commit leaves no restore point; but a
retried *run* would take a new snapshot and read again while the operator may already be
looking at the failure.  :func:`commit` runs the commit step (``NO_RETRY``) and turns a transient
error into :class:`CommitInterrupted`, which is not transient, so no runtime retries it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from vmkeep.errors import VmkeepError, is_transient
from vmkeep.runtime.base import Runtime

T = TypeVar("T")


class CommitInterrupted(VmkeepError):
    """Restore point {} was not committed ({}); not retried automatically: run the backup again."""

    exit_code = 15


def commit(rt: Runtime, fn: Callable[..., T], name: str, *args: Any, **kwargs: Any) -> T:
    """Run commit step ``fn`` for restore point ``name`` (see module docstring)."""
    try:
        return rt.step(fn, *args, **kwargs)
    except VmkeepError as exc:
        if is_transient(exc):
            raise CommitInterrupted(name, exc.get_message()) from None
        raise
