"""LocalRuntime: the same retry policy as under Prefect, slots, progress closed on failure."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from vmkeep.errors import VmkeepError
from vmkeep.runtime import NO_RETRY, LocalRuntime, RetryPolicy, step_def
from vmkeep.runtime.base import definition_of
from vmkeep.runtime.local import PEAKS


class Flaky(VmkeepError):
    """flaky"""

    is_transient = True


class Broken(VmkeepError):
    """broken"""


def test_transient_errors_are_retried_per_policy() -> None:
    calls: list[int] = []

    @step_def("flaky", RetryPolicy(retries=2, delay_s=5.0))
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Flaky()
        return "ok"

    rt = LocalRuntime(retry_delay_scale=0.0)
    assert definition_of(flaky).name == "flaky"
    assert rt.step(flaky) == "ok" and len(calls) == 3
    calls.clear()

    @step_def("commit", NO_RETRY)
    def commit() -> None:
        calls.append(1)
        raise Flaky()

    with pytest.raises(Flaky):
        rt.step(commit)
    assert len(calls) == 1


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    @step_def("broken")
    def broken() -> None:
        calls.append(1)
        raise Broken()

    with pytest.raises(Broken):
        LocalRuntime(retry_delay_scale=0.0).step(broken)
    assert len(calls) == 1


def test_cancel_interrupts_the_retry_wait() -> None:
    rt = LocalRuntime()  # an hour's delay: cancelling must end the wait, not sleep through it
    started = threading.Event()

    @step_def("flaky", RetryPolicy(retries=5, delay_s=3600.0))
    def flaky() -> None:
        started.set()
        raise Flaky()

    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(errors, rt.step, flaky))
    worker.start()
    assert started.wait(60)
    rt.cancel()
    worker.join(60)
    assert not worker.is_alive()
    assert errors and type(errors[0]).__name__ == "Cancelled"


def _capture(errors: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:
        errors.append(exc)


def test_slots_bound_concurrency() -> None:
    rt = LocalRuntime()
    PEAKS.clear()
    inside = threading.Barrier(2, timeout=0.5)
    results: list[bool] = []

    def one() -> None:
        with rt.slots([("vmkeep-datastore-test", 1)]):
            try:
                inside.wait()  # both inside at once would pass the barrier
                results.append(True)
            except threading.BrokenBarrierError:
                results.append(False)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert PEAKS["vmkeep-datastore-test"] == 1
    assert results == [False, False]


def test_progress_feeds_the_callback_and_reports_are_kept() -> None:
    seen: list[int] = []
    rt = LocalRuntime(on_progress=seen.append)
    progress = rt.progress("disk 0", 10)
    progress.advance(4)
    progress.close(failed=True)
    rt.publish_table("k", [{"a": 1}])
    assert seen == [4]
    assert rt.reports == [("k", "table", [{"a": 1}])]
