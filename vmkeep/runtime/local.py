"""``LocalRuntime``: run a job in this process, without Prefect.

The same retry policy as under Prefect (transient errors only, ``retries`` times, ``delay_s``
apart — ``retry_delay_scale`` lets tests shorten the wait), the same concurrency slots as
process-local semaphores (:data:`PEAKS` records the highest use per slot), reports kept in
:attr:`LocalRuntime.reports` (the CLI prints the job's summary on the terminal or as JSON) and
log lines on the ``vmkeep`` logger.  No Prefect import, so a direct ``vmkeep backup`` starts in a
fraction of a second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vmkeep.runtime.base import (
    Cancelled,
    ChainProgress,
    NullProgress,
    Progress,
    Runtime,
    definition_of,
    iter_slots,
)

T = TypeVar("T")
PEAKS: dict[str, int] = defaultdict(int)
_ACTIVE: dict[str, int] = defaultdict(int)
_LOCK = threading.Lock()
_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _semaphore(name: str, limit: int) -> threading.BoundedSemaphore:
    """One semaphore per slot and limit, shared by every run in this process."""
    with _LOCK:
        sem = _SEMAPHORES.get((name, limit))
        if sem is None:
            sem = _SEMAPHORES[(name, limit)] = threading.BoundedSemaphore(limit)
        return sem


@contextlib.contextmanager
def track(names: Sequence[str]) -> Iterator[None]:
    """Count the block as one user of each slot in :data:`PEAKS` (both runtimes call it)."""
    with _LOCK:
        for name in names:
            _ACTIVE[name] += 1
            PEAKS[name] = max(PEAKS[name], _ACTIVE[name])
    try:
        yield
    finally:
        with _LOCK:
            for name in names:
                _ACTIVE[name] -= 1


class _CallbackProgress:
    def __init__(self, callback: Callable[[int], None]) -> None:
        self.callback = callback

    def advance(self, nbytes: int) -> None:
        self.callback(nbytes)

    def close(self, failed: bool = False) -> None:
        pass


@dataclass
class LocalRuntime:
    """A :class:`~vmkeep.runtime.base.Runtime` running everything in-process.

    ``on_progress``: a callback fed the bytes of every :meth:`progress` (the CLI's bar).
    ``reports``: ``(key, kind, content)`` of everything published, for the caller to show.
    """

    on_progress: Callable[[int], None] | None = None
    retry_delay_scale: float = 1.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("vmkeep.job")
    )
    reports: list[tuple[str, str, Any]] = field(default_factory=list)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    owns_stdout: bool = True

    def step(
        self, fn: Callable[..., T], *args: Any, step_name: str | None = None, **kwargs: Any
    ) -> T:
        definition = definition_of(fn)
        attempt = 1
        while True:
            self.check_cancelled()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not definition.retry.should_retry(exc, attempt):
                    raise
                self.log.warning(
                    "%s failed (%s); retry %d of %d",
                    step_name or definition.name,
                    exc,
                    attempt,
                    definition.retry.retries,
                )
                attempt += 1
                pause = definition.retry.delay(attempt - 1) * self.retry_delay_scale
                if self.cancel_event.wait(pause):
                    raise Cancelled() from None

    @contextlib.contextmanager
    def slots(self, slots: Sequence[tuple[str, int]]) -> Iterator[None]:
        ordered = list(iter_slots(slots))
        acquired: list[threading.BoundedSemaphore] = []
        try:
            for name, limit in ordered:
                sem = _semaphore(name, limit)
                sem.acquire()
                acquired.append(sem)
            with track([n for n, _ in ordered]):
                yield
        finally:
            for sem in reversed(acquired):
                sem.release()

    def publish_table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        self.reports.append((key, "table", rows))

    def publish_markdown(self, key: str, markdown: str, description: str = "") -> None:
        self.reports.append((key, "markdown", markdown))

    def progress(self, description: str, total: int) -> Progress:
        if self.on_progress is None:
            return NullProgress()
        return ChainProgress(_CallbackProgress(self.on_progress))

    def expect_slots(self, key: str, slots: Sequence[tuple[str, int]]) -> None:
        pass  # process-local semaphores cost nothing to take again

    def subjob(
        self,
        job: Callable[[Any, Runtime], T],
        spec: Any,
        name: str,
        label: str | None = None,
        key: str | None = None,
    ) -> T:
        child = LocalRuntime(
            on_progress=None,
            retry_delay_scale=self.retry_delay_scale,
            log=self.log,
            reports=self.reports,
            cancel_event=self.cancel_event,
        )
        return job(spec, child)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def active_run_ids(self) -> set[str]:
        return set()  # no orchestrator: nothing else is known to be running

    def cancel(self) -> None:
        """Ask the run to stop at its next step (signal handlers call this)."""
        self.cancel_event.set()
