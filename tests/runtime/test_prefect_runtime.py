"""PrefectRuntime against the real Prefect server of the test session: child jobs are task runs
named by the parent (their steps nested and labelled), a run keeps the global concurrency slots
its own children expect and returns every one at its end, and a child's run id counts as active
for the snapshot sweep exactly while its task run and flow run are running."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow

from vmkeep.runtime.base import Runtime, step_def
from vmkeep.runtime.prefect_runtime import child_run_ids, own_heartbeat, run_job_in_flow

LIMIT = f"vmkeep-datastore-test-{uuid.uuid4().hex[:8]}"


@step_def("read-disk")
def _read(n: int) -> int:
    return n * 2


def child_job(spec: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    with rt.slots([(LIMIT, 1)]):
        value = rt.step(_read, spec["n"])
    # task run states reach the server through events: wait (bounded) until it shows this one
    active = _eventually(lambda: (lambda a: a if rt.run_id in a else None)(rt.active_run_ids()))
    return {"run_id": rt.run_id, "value": value, "active": sorted(active or ())}


def parent_job(spec: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    keys = [f"vm{i}" for i in range(spec["children"])]
    for key in keys:
        rt.expect_slots(key, [(LIMIT, 1)])
    results = [
        rt.subjob(child_job, {"n": i}, f"child {key} now", label=key, key=key)
        for i, key in enumerate(keys)
    ]
    pool = getattr(rt, "pool")  # noqa: B009 - PrefectRuntime's, read by this test only
    return {
        "children": results,
        "parent_run_id": rt.run_id,
        "server_acquisitions": dict(pool.server_acquisitions),
        "recorded": sorted(child_run_ids(rt.run_id)),  # for the crash hooks, while running
    }


@flow(name="vmkeep-test-parent", persist_result=False)
def parent_flow(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_job_in_flow(parent_job, spec)
    return result


def _task_runs(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(
            client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
            )
        )


def _eventually(check: Any, deadline_s: float = 120.0) -> Any:
    import time

    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_children_share_the_runs_slots_and_are_named_task_runs(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    result = parent_flow({"children": 3})
    parent = result["parent_run_id"]
    children = result["children"]
    assert [c["value"] for c in children] == [0, 2, 4]
    # one server acquisition for three children: the run kept the slot between them
    assert result["server_acquisitions"] == {LIMIT: 1}
    # every slot went back to the server at the end of the run
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(LIMIT)
    assert limit.active_slots == 0 and limit.limit == 1

    # each child ran as a task run of the parent flow run (no subflow): its run id is that
    # task run's id, and it was active (for the sweep) while it ran, with its parent
    child_ids = {c["run_id"] for c in children}
    assert parent not in child_ids and len(child_ids) == 3
    assert set(result["recorded"]) == child_ids
    assert child_run_ids(parent) == set()  # forgotten once the run ended normally
    for c in children:
        assert c["run_id"] in c["active"] and parent in c["active"]

    def named() -> Any:
        runs = _task_runs(parent)
        names = {t.name for t in runs}
        wanted = {f"child vm{i} now" for i in range(3)} | {f"vm{i}: read-disk" for i in range(3)}
        return runs if wanted <= names else None

    runs = _eventually(named)
    assert runs, {t.name for t in _task_runs(parent)}
    by_id = {str(t.id): t for t in runs}
    assert child_ids <= set(by_id)
    assert {by_id[c].name for c in child_ids} == {f"child vm{i} now" for i in range(3)}

    # after the run: neither the flow run nor its children are active any more
    from vmkeep.runtime.prefect_runtime import PrefectRuntime

    def finished() -> bool:
        active = PrefectRuntime.active_run_ids(object.__new__(PrefectRuntime))
        return parent not in active and not child_ids & active

    assert _eventually(finished)


@pytest.mark.parametrize("children", [0])
def test_a_run_without_children_holds_no_slot(prefect_api: str, children: int) -> None:
    result = parent_flow({"children": children})
    assert result["children"] == [] and result["server_acquisitions"] == {}


def _heartbeats(flow_run_id: str) -> list[Any]:
    """The ``prefect.flow-run.heartbeat`` events the server holds for a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    query = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        found = client.request(
            "POST", "/events/filter", json={"filter": query.model_dump(mode="json"), "limit": 50}
        )
    return list(found.json().get("events", []))


def heartbeat_job(spec: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    from prefect.settings import get_current_settings

    # while the run goes on, its heartbeat reaches the server (events: wait, bounded)
    seen = _eventually(lambda: _heartbeats(rt.run_id))
    return {
        "run_id": rt.run_id,
        "prefect_heartbeat": get_current_settings().flows.heartbeat_frequency,
        "seen": len(seen or []),
    }


@flow(name="vmkeep-test-heartbeat", persist_result=False)
def heartbeat_flow(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_job_in_flow(heartbeat_job, spec)
    return result


def test_vmkeeps_heartbeat_replaces_prefects_with_the_same_events(prefect_api: str) -> None:
    """The safety Prefect's heartbeat gives (a zombie-run automation marks a run Crashed when
    they stop, freeing its snapshots for the sweep) stays: the same events, from vmkeep's
    thread, which ends with the run (no 1 s sleep to wait for)."""
    import threading

    with own_heartbeat():
        result = heartbeat_flow({})
    assert result["prefect_heartbeat"] is None  # Prefect's own thread was off for this run
    assert result["seen"] >= 1
    event = _heartbeats(result["run_id"])[0]
    assert event["resource"]["prefect.resource.id"] == f"prefect.flow-run.{result['run_id']}"
    assert any(r["prefect.resource.role"] == "flow" for r in event["related"])
    assert _eventually(
        lambda: not [t for t in threading.enumerate() if t.name == "vmkeep-heartbeat"]
    )


def test_without_own_heartbeat_prefects_stays(prefect_api: str) -> None:
    result = heartbeat_flow({})
    assert result["prefect_heartbeat"] is not None and result["seen"] >= 1


def logging_job(spec: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    import logging

    logging.getLogger("vmkeep.test-bridge").warning("inside %s", spec["marker"])
    return {"run_id": rt.run_id}


@flow(name="vmkeep-test-logs", persist_result=False)
def logging_flow(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_job_in_flow(logging_job, spec)
    return result


def test_vmkeep_records_reach_the_run_log_and_stay_local_outside_a_run(
        prefect_api: str, caplog: pytest.LogCaptureFixture) -> None:
    """A run's ``vmkeep`` records reach its log on the server; the same process logging outside
    a run (a worker's clean-up, a plain job) gets no "without a flow run id" warning."""
    import logging
    import warnings

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    marker = uuid.uuid4().hex
    run_id = logging_flow({"marker": marker})["run_id"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING, logger="vmkeep"):
            logging.getLogger("vmkeep.test-bridge").warning("outside %s", marker)
    assert f"outside {marker}" in caplog.text  # the process's own handlers still have it

    def run_log() -> list[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(str(run_id))])))
        return [entry.message for entry in logs if marker in entry.message]

    assert _eventually(run_log) == [f"inside {marker}"]
