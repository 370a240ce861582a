"""``PrefectRuntime``: run a job inside a Prefect flow run.

* each :meth:`~PrefectRuntime.step` is a Prefect task run (named by the step, e.g.
  ``disk 0 [ds1] linux01/linux01.vmdk``) with the step's retry policy as Prefect retries and
  ``retry_condition_fn`` (transient errors only), no caching, no result persistence;
* slots are Prefect global concurrency limits ``vmkeep-host-<name>`` / ``vmkeep-datastore-<name>``
  (created on first use with the configured limit, editable in the UI), so limits hold across
  workers and machines; a run holds them through one :class:`~vmkeep.runtime.slot_pool.SlotPool`
  (leases through one Prefect client) and lends them to its child jobs, so a ``backup-vms`` run
  asks the server for a slot only when none of its own is free, not twice per VM;
* reports are artifacts; progress is a progress artifact, closed (100 %, "failed after …") when
  the work fails;
* :meth:`~PrefectRuntime.subjob` runs the child job as a task run named ``name`` (``backup-vm
  linux01 2026-12-02 01:00``) whose steps are its nested task runs, named with the child's label
  (``linux01: snapshot``) — not as a subflow: a subflow costs about seven API round trips and a
  heartbeat thread per VM.  The child's run id (its snapshots' marker) is that task run's id;
  :meth:`~PrefectRuntime.active_run_ids` counts it active while the task run and its flow run
  are, so a crashed parent run (marked ``Crashed`` by its worker, or through its heartbeats)
  frees its children's snapshots for the sweep;
* ``log`` is the run logger, and the ``vmkeep`` logger is bridged to the run log too;
* an expected error (a :class:`~vmkeep.errors.VmkeepError` that wants no traceback) ends the task
  or flow run as ``Failed`` with the one-line message, never an 80-line traceback
  (:func:`run_job_in_flow`).

Flows register themselves for their job with :func:`register_flow`, so a parent job can run a
child job as a subflow without the runtime importing ``vmkeep.flows`` (layers point down).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Failed

from vmkeep.errors import VmkeepError, is_transient
from vmkeep.runtime import notify
from vmkeep.runtime import prefect_reports as reports
from vmkeep.runtime.api_calls import quick
from vmkeep.runtime.base import (
    NO_RETRY,
    NullProgress,
    Progress,
    Runtime,
    StepDef,
    definition_of,
    iter_slots,
    retry_transient,
)
from vmkeep.runtime.local import track
from vmkeep.runtime.slot_pool import Locked, SlotPool

T = TypeVar("T")
_FLOWS: dict[Callable[..., Any], Any] = {}
_TASKS: dict[tuple[Callable[..., Any], StepDef], Any] = {}
_BRIDGED = False


def run_name(kind: str, spec_type: type[Any], label: Callable[[Any], str]) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<kind> <label(spec)> <YYYY-MM-DD HH:MM>`` (UTC)."""

    def name() -> str:
        from prefect.runtime import flow_run

        from vmkeep import clock

        spec = flow_run.parameters["spec"]
        spec = spec if isinstance(spec, spec_type) else spec_type.model_validate(spec)
        return f"{kind} {label(spec)} {clock.now():%Y-%m-%d %H:%M}"

    return name


def fast_parameters(flow_obj: Any) -> Any:
    """Let ``flow_obj`` record pydantic parameters (vmkeep's specs) with pydantic's own JSON
    dump instead of FastAPI's ``jsonable_encoder`` — the same JSON (FastAPI calls
    ``model_dump(mode="json", by_alias=True)`` for a model), without importing FastAPI and
    Starlette into a CLI process (0.2–0.5 s measured).  Other parameters keep Prefect's
    encoder.  Returns ``flow_obj``."""
    if "serialize_parameters" in vars(flow_obj):
        return flow_obj
    prefect_encoder = flow_obj.serialize_parameters

    def serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
        from pydantic import BaseModel

        if not all(isinstance(v, BaseModel) for v in parameters.values()):
            return dict(prefect_encoder(parameters))
        return {k: v.model_dump(mode="json", by_alias=True) for k, v in parameters.items()}

    flow_obj.serialize_parameters = serialize_parameters
    return flow_obj


def register_flow(job: Callable[..., Any], flow_obj: Any) -> None:
    """Make ``flow_obj`` the flow that runs ``job`` as a subflow, and give it the crash report
    hook (:func:`vmkeep.runtime.prefect_reports.report_crash`)."""
    _FLOWS[job] = flow_obj
    hooks = getattr(flow_obj, "on_crashed_hooks", None)
    if isinstance(hooks, list) and reports.report_crash not in hooks:
        hooks.append(reports.report_crash)


def expected(exc: BaseException) -> bool:
    """An error the user caused or can fix: one line, no traceback, no retry."""
    return isinstance(exc, VmkeepError) and not exc.traceback and not is_transient(exc)


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` returning a Failed state (message, the error as data) for expected errors."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not expected(exc):
                raise
            return Failed(message=str(exc), data=exc)

    run.__name__ = getattr(fn, "__name__", "step")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    run.__module__ = getattr(fn, "__module__", __name__)
    run.__doc__ = fn.__doc__
    return run


def _task_for(fn: Callable[..., Any], definition: StepDef) -> Any:
    key = (fn, definition)
    found = _TASKS.get(key)
    if found is None:
        found = _TASKS[key] = task(
            name=definition.name,
            retries=definition.retry.retries,
            retry_delay_seconds=definition.retry.delay_s,
            retry_condition_fn=retry_transient,
            cache_policy=NO_CACHE,
            persist_result=False,
        )(_guarded(fn))
    return found


def _in_a_run(record: logging.LogRecord) -> bool:
    """Whether a record belongs to a Prefect run: it names one, or is logged inside one."""
    from prefect.context import FlowRunContext, TaskRunContext

    return bool(getattr(record, "flow_run_id", None) or getattr(record, "task_run_id", None)
                or FlowRunContext.get() or TaskRunContext.get())


def _bridge_vmkeep_logger() -> None:
    """Send the ``vmkeep`` logger's records (snapshot, transport, bytes…) to the run log.

    Only records logged inside a run go there: the same process may also run jobs without
    Prefect (a worker's clean-up, the CLI after a flow), whose records stay with the process's
    own handlers instead of making Prefect warn "without a flow run id" for each."""
    global _BRIDGED
    if _BRIDGED:
        return
    from prefect.logging.handlers import APILogHandler

    handler = APILogHandler()
    handler.addFilter(_in_a_run)
    logging.getLogger("vmkeep").addHandler(handler)
    _BRIDGED = True


#: options of child flow runs: their spec was validated by the parent's
_SUBJOB_OPTIONS: dict[str, Any] = {"validate_parameters": False}
#: disks smaller than this get no progress artifact (its two API calls would sit inside the
#: snapshot window of a disk read in seconds)
PROGRESS_MIN_BYTES = 1 << 30


def _create_limits(client: Any, slots: Sequence[tuple[str, int]]) -> None:
    """Create the global concurrency limits ``slots`` (name, limit) — the ones a lease did not
    cover because they do not exist yet (the UI may change a limit afterwards)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    for name, limit in slots:
        create = GlobalConcurrencyLimitCreate(name=name, limit=limit)
        with contextlib.suppress(ObjectAlreadyExists):  # another run was first
            quick(lambda: client.create_global_concurrency_limit(create))  # noqa: B023


class _PrefectSlots:
    """The :class:`~vmkeep.runtime.slot_pool.SlotServer` of a run: Prefect global concurrency
    limits, leases held by flow run ``holder``, through one sync client."""

    LEASE_S = 300.0

    def __init__(self, limits: dict[str, int], holder: str) -> None:
        self.limits, self.holder = limits, holder
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from prefect.client.orchestration import get_client

                self._client = get_client(sync_client=True)
                self._client.__enter__()
            return self._client

    def acquire(self, names: list[str]) -> str:
        """One lease for ``names`` in one call; a name without a limit on the server yet is
        missing from the server's answer (it limits nothing): the lease is returned, the
        missing limits created, and the lease asked for again."""
        client = self.client()
        lease, granted = self._lease(client, names)
        missing = [name for name in names if name not in granted]
        if missing:
            self.release(lease)
            _create_limits(client, [(name, self.limits.get(name, 1)) for name in missing])
            lease, _ = self._lease(client, names)
        return lease

    def _lease(self, client: Any, names: list[str]) -> tuple[str, set[str]]:
        from uuid import UUID

        import httpx
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder

        try:
            response = quick(lambda: client.increment_concurrency_slots_with_lease(
                names=names,
                slots=1,
                mode="concurrency",
                lease_duration=self.LEASE_S,
                holder=ConcurrencyLeaseHolder(type="flow_run", id=UUID(self.holder)),
            ))
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:
                raise
            raise Locked(float(exc.response.headers.get("Retry-After", 1.0))) from None
        body = response.json()
        return str(body["lease_id"]), {limit["name"] for limit in body.get("limits", [])}

    def release(self, lease: str) -> None:
        from uuid import UUID

        client = self.client()
        quick(lambda: client.release_concurrency_slots_with_lease(UUID(lease)))

    def renew(self, leases: list[str]) -> None:
        from uuid import UUID

        client = self.client()
        for lease in leases:
            quick(lambda: client.renew_concurrency_lease(UUID(lease), self.LEASE_S))  # noqa: B023

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.__exit__(None, None, None)


class _ArtifactProgress:
    """A progress artifact, updated at most every ``min_interval_s`` and every ``step_pct``
    percent (a few API calls per disk, not one per chunk; never inside a short snapshot window
    more than twice: created, closed)."""

    def __init__(
        self, description: str, total: int, step_pct: float = 5.0, min_interval_s: float = 2.0
    ) -> None:
        from prefect.artifacts import create_progress_artifact

        self.description, self.total = description, total
        self.step_pct, self.min_interval_s = step_pct, min_interval_s
        self.done, self.shown, self.closed = 0, 0.0, False
        self.last = time.monotonic()
        self.artifact_id: Any = create_progress_artifact(progress=0.0, description=description)

    def advance(self, nbytes: int) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += nbytes
        pct = min(100.0, 100.0 * self.done / self.total)
        now = time.monotonic()
        if pct - self.shown >= self.step_pct and now - self.last >= self.min_interval_s:
            self.shown, self.last = pct, now
            update_progress_artifact(artifact_id=self.artifact_id, progress=pct)

    def close(self, failed: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        if self.closed:
            return
        self.closed = True
        if failed:
            update_progress_artifact(
                artifact_id=self.artifact_id,
                progress=100.0,
                description=(
                    f"{self.description}: failed after {100.0 * self.done / self.total:.0f} %"
                ),
            )
        else:
            update_progress_artifact(artifact_id=self.artifact_id, progress=100.0)


#: flow run id -> ids of the task runs its child jobs ran as (their snapshots' run ids); the
#: crash hooks of a parent flow release what those children left
_CHILD_RUNS: dict[str, set[str]] = {}


def child_run_ids(run_id: str) -> set[str]:
    """The run ids of the child jobs flow run ``run_id`` ran in this process."""
    return set(_CHILD_RUNS.get(run_id, ()))


def _run_child(
    job: Callable[[Any, Runtime], T], spec: Any, parent: PrefectRuntime, label: str | None,
    key: str | None,
) -> T:
    """The body of a child job's task run: the job with a runtime of its own (run id = this
    task run's id, steps as nested task runs named with ``label``)."""
    from prefect.runtime import task_run

    child = PrefectRuntime(parent=parent, run_id=str(task_run.id), label=label, key=key)
    _CHILD_RUNS.setdefault(parent.run_id, set()).add(child.run_id)
    return job(spec, child)


class PrefectRuntime:
    """A :class:`~vmkeep.runtime.base.Runtime` inside a Prefect flow run (see module docstring).

    A top-level runtime belongs to the flow run (its run id, its slot pool); a child runtime
    (:meth:`subjob`) shares its parent's logger and slot pool, with the child's task run id and
    label."""

    def __init__(
        self,
        parent: PrefectRuntime | None = None,
        run_id: str | None = None,
        label: str | None = None,
        key: str | None = None,
    ) -> None:
        self.label, self.key = label, key
        self.owns_stdout = False  # a worker's, or the flow call's with Prefect's console logs
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger]
        self.run_id: str
        self._slots: _PrefectSlots
        self.pool: SlotPool
        if parent is not None:
            self.run_id = run_id or parent.run_id
            self.log, self._slots, self.pool = parent.log, parent._slots, parent.pool
            return
        from prefect.runtime import flow_run

        self.run_id = run_id or str(flow_run.id)
        self.log = get_run_logger()
        self._slots = _PrefectSlots({}, self.run_id)
        self.pool = SlotPool(self._slots)
        _bridge_vmkeep_logger()

    def step(
        self, fn: Callable[..., T], *args: Any, step_name: str | None = None, **kwargs: Any
    ) -> T:
        definition = definition_of(fn)
        task_obj = _task_for(fn, definition)
        if self.label:
            step_name = f"{self.label}: {step_name or definition.name}"
        if step_name:
            task_obj = task_obj.with_options(task_run_name=step_name)
        state = task_obj(*args, return_state=True, **kwargs)
        result: T = state.result()  # raises the step's error (also an expected one, see _guarded)
        return result

    @contextlib.contextmanager
    def slots(self, slots: Sequence[tuple[str, int]]) -> Iterator[None]:
        ordered = list(iter_slots(slots))
        if not ordered:
            yield
            return
        self._slots.limits.update(ordered)
        names = [n for n, _ in ordered]
        with self.pool.hold(names, self.key), track(names):
            yield

    def expect_slots(self, key: str, slots: Sequence[tuple[str, int]]) -> None:
        """Child ``key`` (see :meth:`subjob`) will hold ``slots``: keep them between children."""
        self._slots.limits.update(slots)
        self.pool.expect(key, [n for n, _ in slots])

    def publish_table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        from prefect.artifacts import create_table_artifact

        quick(lambda: create_table_artifact(key=key, table=rows, description=description))

    def publish_markdown(self, key: str, markdown: str, description: str = "") -> None:
        from prefect.artifacts import create_markdown_artifact

        quick(lambda: create_markdown_artifact(key=key, markdown=markdown, description=description))

    def progress(self, description: str, total: int) -> Progress:
        if total < PROGRESS_MIN_BYTES:  # read in a few seconds: the run's report says enough
            return NullProgress()
        return _ArtifactProgress(description, total)

    def subjob(
        self,
        job: Callable[[Any, Runtime], T],
        spec: Any,
        name: str,
        label: str | None = None,
        key: str | None = None,
    ) -> T:
        """Run ``job`` as a task run named ``name`` (see module docstring); ``key``: the key
        of the child's :meth:`expect_slots`."""
        flow_obj = _FLOWS.get(job)
        kind = getattr(flow_obj, "name", None) or job.__name__.replace("_", "-")
        task_obj = _task_for(_run_child, StepDef(kind, NO_RETRY)).with_options(
            task_run_name=name
        )
        try:
            state = task_obj(job, spec, self, label, key, return_state=True)
            result: T = state.result()
            return result
        finally:
            if key is not None:
                self.pool.done(key)

    def check_cancelled(self) -> None:
        pass  # Prefect cancels the run itself (and the flow's hooks release what it held)

    def active_run_ids(self) -> set[str]:
        """Flow runs Prefect reports as running, pending or cancelling, and the running task
        runs of those flow runs (child jobs: :meth:`subjob`)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
            TaskRunFilter,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        states = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))
                )
            )
            active = {str(r.id) for r in runs}
            tasks = (
                client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])),
                    task_run_filter=TaskRunFilter(
                        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=states))
                    ),
                )
                if runs
                else []
            )
        return active | {str(t.id) for t in tasks}

    def close(self) -> None:
        """The flow run is over: return its slots (top-level runtimes only)."""
        self.pool.close()


#: the heartbeat interval of flow runs started through :func:`own_heartbeat` (None: Prefect's)
_OWN_HEARTBEAT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "vmkeep_own_heartbeat", default=None
)


@contextlib.contextmanager
def own_heartbeat() -> Iterator[None]:
    """Flow runs started in this block send vmkeep's heartbeat instead of Prefect's.

    Prefect's heartbeat thread emits ``prefect.flow-run.heartbeat`` every
    ``flows.heartbeat_frequency`` seconds (a zombie-run automation marks a run whose heartbeats
    stop ``Crashed``, which frees its snapshots for the sweep); but it sleeps in 1 s steps and a
    run's end waits for it — 0.5–1.1 s per orchestrated CLI run.  Here Prefect's is off and
    :func:`run_job_in_flow` sends the same events, at the same interval, from a thread that
    stops at once.  Only job flows (whose body is :func:`run_job_in_flow`) may run in this block.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    every = get_current_settings().flows.heartbeat_frequency
    if every is None:  # heartbeats are off: nothing to replace
        yield
        return
    token = _OWN_HEARTBEAT.set(every)
    try:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    finally:
        _OWN_HEARTBEAT.reset(token)


@contextlib.contextmanager
def _heartbeat() -> Iterator[None]:
    """Emit the flow run's heartbeat events (as Prefect's engine builds them) while the job runs,
    when :func:`own_heartbeat` turned Prefect's off."""
    every = _OWN_HEARTBEAT.get()
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if every is None or run is None:
        yield
        return
    from prefect import __version__
    from prefect.events import emit_event
    from prefect.events.related import tags_as_related_resources
    from prefect.events.schemas.events import RelatedResource

    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run.id}",
        "prefect.resource.name": run.name or "",
        "prefect.version": __version__,
    }
    related = []
    if run.flow_id:
        related.append(
            RelatedResource.model_validate(
                {
                    "prefect.resource.id": f"prefect.flow.{run.flow_id}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": context.flow.name if context and context.flow else "",
                }
            )
        )
    if run.deployment_id:
        related.append(
            RelatedResource.model_validate(
                {
                    "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                    "prefect.resource.role": "deployment",
                }
            )
        )
    related += tags_as_related_resources(set(run.tags or []))
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception:
                logging.getLogger(__name__).debug("heartbeat not sent", exc_info=True)
            if stop.wait(every):
                return

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(beat,), name="vmkeep-heartbeat", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()  # the thread ends at once: no join to wait for


def _from_deployment() -> bool:
    from prefect.runtime import flow_run

    return bool(flow_run.deployment_id)


#: flow-level retries of deployment runs (a short vCenter or target outage must not lose the
#: night); ad-hoc runs (the CLI) are not retried as a whole — their steps are.
FLOW_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 300}


def run_job_in_flow(job: Callable[[Any, Runtime], T], spec: Any) -> Any:
    """The body of every vmkeep flow: run ``job`` with a :class:`PrefectRuntime`.

    * a transient error in a run started by a deployment is raised, so Prefect retries the run
      (flows declare :data:`FLOW_RETRIES`); jobs turn errors that must not be retried — a
      commit interrupted half-way — into non-transient ones;
    * an expected error ends the run ``Failed`` with its one-line message (logged once, no
      traceback), and so does a transient one outside deployments; calling the flow still
      raises that error, so the CLI exits with its code;
    * anything else is a bug: the run ends ``Failed`` with the traceback in its log, and is not
      retried (a retry would not fix a bug);
    * a top-level run sends its report (:mod:`vmkeep.runtime.notify`) — not an attempt that
      will be retried, not a subflow (its parent reports).
    """
    rt = PrefectRuntime()
    run = _flow_run()
    top_level = run is None or run.parent_task_run_id is None  # a subflow's parent reports
    with notify.watch(
        job, spec, reports.notify_config if top_level else reports.nowhere,
        run_id=rt.run_id, link=reports.run_link(rt.run_id), report_interrupts=False,
    ) as watched:
        try:
            with _heartbeat():
                result = job(spec, rt)
            _CHILD_RUNS.pop(rt.run_id, None)  # (kept after a crash or cancellation: the hooks')
            watched.result = result
            return result
        except Exception as exc:
            _CHILD_RUNS.pop(rt.run_id, None)  # the children's own ``finally`` released their work
            if is_transient(exc) and _from_deployment():
                rt.log.warning("%s (transient: the run will be retried)", exc)
                watched.skip = run is not None and run.run_count <= (
                    run.empirical_policy.retries or 0)  # Prefect will retry: no report yet
                raise
            if expected(exc) or is_transient(exc):
                rt.log.error("%s", exc)
            else:
                rt.log.exception("%s failed: %r", job.__name__, exc)
            _no_retry()
            watched.failed = exc
            return Failed(message=str(exc) or repr(exc), data=exc)
        finally:
            rt.close()


def _flow_run() -> Any:
    """The flow run this code runs in, or ``None``."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def _no_retry() -> None:
    """Tell the server not to retry this run: Prefect retries every failed flow run while it has
    retries left (flows have no retry condition), so the run's policy drops them."""
    from prefect.client.orchestration import get_client

    run = _flow_run()
    if run is None or not run.empirical_policy.retries:
        return
    policy = run.empirical_policy.model_copy(update={"retries": 0})
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, empirical_policy=policy)
    run.empirical_policy = policy
