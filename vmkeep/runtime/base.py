"""The runtime port: what a job needs from whatever runs it.

A job (:mod:`vmkeep.jobs`) is a plain function ``job(spec, rt)``.  Everything that differs between
"run it here, now" and "run it under Prefect" goes through ``rt``, an object satisfying
:class:`Runtime`:

* :meth:`Runtime.step` — run one step (``find-vm``, ``snapshot``, ``disk 0 …``) with its
  :class:`RetryPolicy`; under Prefect each step is a task run named ``name``.
* :meth:`Runtime.slots` — hold concurrency slots (per ESX host, per datastore) for a block.
* :meth:`Runtime.publish_table` / :meth:`Runtime.publish_markdown` — reports (artifacts, or the
  terminal/JSON), :meth:`Runtime.progress` — byte progress closed on success *and* failure.
* :meth:`Runtime.subjob` — run another job as a child (a named task run, its steps nested, under
  Prefect); :meth:`Runtime.expect_slots` announces the slots a child will hold.
* ``log`` (a logger whose lines reach the run log), ``run_id`` (names snapshots),
  :meth:`Runtime.check_cancelled` and :meth:`Runtime.active_run_ids` (runs still going).

Retries are the same in both runtimes: a step is retried only when its error is transient
(:func:`vmkeep.errors.is_transient`), at most ``retries`` times, ``delay_s`` apart.  Steps that
must never repeat (committing a restore point half-way) use :data:`NO_RETRY`.  The policy
is vmkeep's one retry policy, :class:`vmkeep.retry.RetryPolicy`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from vmkeep.errors import VmkeepError, is_transient
from vmkeep.retry import DEFAULT_RETRY as DEFAULT_RETRY
from vmkeep.retry import NO_RETRY as NO_RETRY
from vmkeep.retry import RetryPolicy as RetryPolicy

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])




@dataclass(frozen=True)
class StepDef:
    """A step's stable name (the Prefect task name) and retry policy."""

    name: str
    retry: RetryPolicy = DEFAULT_RETRY


def step_def(name: str, retry: RetryPolicy = DEFAULT_RETRY) -> Callable[[F], F]:
    """Declare a plain function as a step: its name and retry policy travel with it.

    The function stays a plain function (``fn.fn is fn`` for callers written against Prefect's
    ``.fn``); runtimes read the declaration with :func:`definition_of`.
    """

    def mark(fn: F) -> F:
        fn.__dict__["vmkeep_step"] = StepDef(name, retry)
        fn.__dict__["fn"] = fn
        return fn

    return mark


def definition_of(fn: Callable[..., Any]) -> StepDef:
    """The step declaration of ``fn`` (undeclared functions: their name, default retries)."""
    found = getattr(fn, "vmkeep_step", None)
    if isinstance(found, StepDef):
        return found
    return StepDef(getattr(fn, "__name__", "step").replace("_", "-"))


def retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn`` for the same rule: retry only errors marked transient
    (plain Python: Prefect hands in the task, its run and its state)."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:
        return is_transient(exc)
    return False


class Cancelled(VmkeepError):
    """The run was cancelled."""

    exit_code = 130


class Progress(Protocol):
    """Byte progress of one piece of work; ``close`` is called exactly once, also on failure."""

    def advance(self, nbytes: int) -> None: ...

    def close(self, failed: bool = False) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """What runs a job: see the module docstring."""

    run_id: str
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    #: True when the job runs inside the command that started it, so standard output is that
    #: command's (a disk streamed there reaches the caller's pipe); False in an orchestrated run,
    #: whose standard output is a worker's or the orchestrator's log
    owns_stdout: bool

    def step(
        self, fn: Callable[..., T], *args: Any, step_name: str | None = None, **kwargs: Any
    ) -> T: ...

    def slots(self, slots: Sequence[tuple[str, int]]) -> AbstractContextManager[None]: ...

    def publish_table(
        self, key: str, rows: list[dict[str, Any]], description: str = ""
    ) -> None: ...

    def publish_markdown(self, key: str, markdown: str, description: str = "") -> None: ...

    def progress(self, description: str, total: int) -> Progress: ...

    def expect_slots(self, key: str, slots: Sequence[tuple[str, int]]) -> None:
        """Child job ``key`` (see :meth:`subjob`) will hold ``slots``: a runtime may keep such
        slots between its children instead of returning and asking for them again."""
        ...

    def subjob(
        self,
        job: Callable[[Any, Runtime], T],
        spec: Any,
        name: str,
        label: str | None = None,
        key: str | None = None,
    ) -> T:
        """Run ``job(spec, child runtime)`` as a child named ``name``; ``label`` names its steps
        (``linux01: snapshot``), ``key`` is the one given to :meth:`expect_slots`."""
        ...

    def check_cancelled(self) -> None: ...

    def active_run_ids(self) -> set[str]:
        """Ids of runs the orchestrator considers running (the sweep spares their snapshots)."""
        ...


class NullProgress:
    """Progress that shows nothing."""

    def advance(self, nbytes: int) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


class ChainProgress:
    """Several progress sinks as one (a terminal bar and a Prefect artifact, say)."""

    def __init__(self, *parts: Progress) -> None:
        self.parts = parts

    def advance(self, nbytes: int) -> None:
        for part in self.parts:
            part.advance(nbytes)

    def close(self, failed: bool = False) -> None:
        for part in self.parts:
            part.close(failed)


def iter_slots(slots: Sequence[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """Slots in one global order (sorted by name), so two runs never wait on each other in a
    cycle."""
    yield from sorted(set(slots))
