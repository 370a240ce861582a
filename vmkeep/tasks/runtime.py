"""Legacy runtime switch of the flows not yet rewritten as jobs (restores, verify, retention,
sweep, licence report).  New code uses :mod:`vmkeep.runtime` and :mod:`vmkeep.jobs` instead.

How tasks run: orchestrated by Prefect, or directly in-process without a Prefect API.

Flows are written once, with the :func:`flow` and :func:`task` decorators re-exported here and
calling tasks through :func:`step` / :func:`submit`.

* **Orchestrated** (a Prefect API is configured, or a deployment runs the flow): the decorators
  are Prefect's, so every run, task, retry and artifact is visible in the Prefect UI.
* **Direct** (a plain ``vmkeep backup`` on a machine without a Prefect API): the CLI sets
  ``VMKEEP_PREFECT=0`` before importing any flow.  The decorators then return light stand-ins that
  call the functions themselves — no engine, no server, and no 3–5 s Prefect import — and
  artifacts are skipped.  The DAG, error handling and ``finally`` clauses are the same code.

:func:`run_flow` also honours direct mode in a process that did import Prefect (tests use that).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from vmkeep.orchestration import prefect_api_configured
from vmkeep.runtime.base import retry_transient

T = TypeVar("T")
ORCHESTRATED = os.environ.get("VMKEEP_PREFECT", "1") != "0"
_direct: contextvars.ContextVar[bool] = contextvars.ContextVar("vmkeep_direct", default=False)


class DirectCallable:
    """Stand-in for a Prefect task or flow when Prefect is not loaded: ``.fn`` and ``()``."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        return _run_now(self.fn, *args, **kwargs)


def _stand_in(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    if fn is None:
        return lambda f: DirectCallable(f, options.get("name"))
    return DirectCallable(fn, options.get("name"))


if ORCHESTRATED:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
else:  # pragma: no cover - exercised by the CLI's direct mode in subprocess tests
    flow = _stand_in  # type: ignore[assignment]
    task = _stand_in
    NO_CACHE = None  # type: ignore[assignment]

__all__ = ["NO_CACHE", "flow", "prefect_api_configured", "retry_transient", "task"]


def _run_now(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    future: Future[T] = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:
        future.set_exception(exc)
    return future


def direct_mode() -> bool:
    return _direct.get() or not ORCHESTRATED


@contextlib.contextmanager
def direct() -> Iterator[None]:
    token = _direct.set(True)
    try:
        yield
    finally:
        _direct.reset(token)


def run_flow(flow_obj: Any, orchestrate: bool | None = None, **params: Any) -> Any:
    """Run a flow through Prefect (``orchestrate``) or directly; ``None`` = auto-detect."""
    if orchestrate is None:
        orchestrate = prefect_api_configured()
    if orchestrate and ORCHESTRATED:
        return flow_obj(**params)
    with direct():
        return flow_obj.fn(**params)


def step(task_obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a task or a plain step (``vmkeep.runtime.step_def``) now and return its result
    (through Prefect unless in direct mode)."""
    if direct_mode():
        return task_obj.fn(*args, **kwargs)
    if not hasattr(task_obj, "submit"):  # a plain step function: Prefect task made on demand
        from vmkeep.runtime.base import definition_of
        from vmkeep.runtime.prefect_runtime import _task_for

        return _task_for(task_obj, definition_of(task_obj))(*args, **kwargs)
    return task_obj(*args, **kwargs)


def submit(task_obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Start a task concurrently; the returned object has ``.result()`` in both modes."""
    if direct_mode():
        return _run_now(task_obj.fn, *args, **kwargs)
    return task_obj.submit(*args, **kwargs)


def publish_table(key: str, table: list[dict[str, Any]], description: str = "") -> None:
    """A Prefect table artifact, unless in direct mode."""
    if direct_mode():
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=key, table=table, description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    """A Prefect markdown artifact, unless in direct mode."""
    if direct_mode():
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=markdown, description=description)


def progress_artifact(description: str, total: int, step_pct: float = 5.0) -> Any:
    """A Prefect progress artifact advanced by ``callback(nbytes)`` (None in direct mode).

    Updates the API only every ``step_pct`` percent, so a long disk costs ~20 calls, not one per
    chunk.
    """
    if direct_mode() or total <= 0:
        return None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id: Any = create_progress_artifact(progress=0.0, description=description)
    state = {"done": 0, "shown": 0.0}

    def advance(nbytes: int) -> None:
        state["done"] += nbytes
        pct = min(100.0, 100.0 * state["done"] / total)
        if pct - state["shown"] >= step_pct or pct >= 100.0 > state["shown"]:
            state["shown"] = pct
            update_progress_artifact(artifact_id=artifact_id, progress=pct)

    return advance


def chain_progress(*callbacks: Any) -> Any:
    """One progress callback calling every non-None one (None when there are none)."""
    live = [c for c in callbacks if c is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def advance(nbytes: int) -> None:
        for callback in live:
            callback(nbytes)

    return advance


def run_id() -> str:
    """The Prefect flow run id when orchestrated, else a fresh id (names marks on vSphere
    objects, e.g. a half-restored VM; the sweep spares marks of active runs)."""
    if not direct_mode():
        with contextlib.suppress(Exception):
            from prefect.runtime import flow_run

            if flow_run.id:
                return str(flow_run.id)
    import uuid

    return uuid.uuid4().hex
