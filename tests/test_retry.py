"""vmkeep's one retry policy (pure logic: pauses are recorded, never slept)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vmkeep.errors import VmkeepError
from vmkeep.retry import (
    DEFAULT_RETRY,
    HTTP_BUSY_RETRY,
    NO_RETRY,
    STORAGE_RETRY,
    RetryPolicy,
    parse_retry_after,
)


class Flaky(VmkeepError):
    """flaky"""

    is_transient = True


class Broken(VmkeepError):
    """broken"""


def failing(errors: list[Exception], result: str = "ok"):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def test_pauses_grow_by_backoff_up_to_the_cap() -> None:
    assert STORAGE_RETRY.delays() == [0.5, 1.0, 2.0, 4.0]
    assert RetryPolicy(retries=6, delay_s=1, backoff=3, cap_s=20).delays() == [1, 3, 9, 20, 20, 20]
    assert DEFAULT_RETRY.delays() == [5.0, 5.0]  # backoff 1: constant
    assert NO_RETRY.delays() == [] and NO_RETRY.attempts == 1
    assert STORAGE_RETRY.delay(0) == 0.0


def test_invalid_policies_are_refused() -> None:
    for bad in ({"retries": -1}, {"delay_s": -1.0}, {"backoff": 0.5}, {"cap_s": -2.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_only_transient_errors_are_retried_and_only_so_often() -> None:
    policy = RetryPolicy(retries=2, delay_s=1.0)
    assert policy.should_retry(Flaky(), 1) and policy.should_retry(Flaky(), 2)
    assert not policy.should_retry(Flaky(), 3)
    assert not policy.should_retry(Broken(), 1)
    assert not policy.should_retry(OSError("reset"), 1)  # not marked transient
    assert policy.should_retry(OSError("reset"), 1, retryable=lambda e: isinstance(e, OSError))
    assert not policy.should_retry(KeyboardInterrupt(), 1, retryable=lambda e: True)


def test_call_retries_then_succeeds_with_the_policy_pauses() -> None:
    pauses: list[float] = []
    seen: list[tuple[int, str]] = []
    fn, calls = failing([Flaky(), Flaky()])
    got = STORAGE_RETRY.call(
        fn, sleep=pauses.append, before_retry=lambda n, e: seen.append((n, type(e).__name__))
    )
    assert got == "ok" and len(calls) == 3
    assert pauses == [0.5, 1.0]
    assert seen == [(1, "Flaky"), (2, "Flaky")]


def test_call_raises_the_last_error_when_attempts_run_out() -> None:
    pauses: list[float] = []
    errors: list[Exception] = [Flaky("a"), Flaky("b"), Flaky("c")]
    fn, calls = failing(errors)
    with pytest.raises(Flaky) as info:
        RetryPolicy(retries=2, delay_s=0.1).call(fn, sleep=pauses.append)
    assert info.value.args == ("c",) and len(calls) == 3 and pauses == [0.1, 0.1]


def test_call_raises_a_permanent_error_at_once() -> None:
    pauses: list[float] = []
    fn, calls = failing([Broken()])
    with pytest.raises(Broken):
        STORAGE_RETRY.call(fn, sleep=pauses.append)
    assert len(calls) == 1 and pauses == []


def test_a_failing_before_retry_hook_does_not_stop_the_retry() -> None:
    def hook(n: int, exc: BaseException) -> None:
        raise OSError("still down")

    fn, calls = failing([Flaky()])
    assert STORAGE_RETRY.call(fn, sleep=lambda _: None, before_retry=hook) == "ok"
    assert len(calls) == 2


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 02 Dec 2026 12:00:09 GMT", now=now) == 9.0
    assert parse_retry_after("Wed, 02 Dec 2026 11:00:00 GMT", now=now) == 0.0  # in the past
    for unreadable in (None, "", "soon", "Wed, 99 Foo"):
        assert parse_retry_after(unreadable) is None


def test_a_server_asked_pause_is_honoured_up_to_the_cap() -> None:
    assert HTTP_BUSY_RETRY.pause(1, "7") == 7.0
    assert HTTP_BUSY_RETRY.pause(1, "3600") == 30.0
    assert HTTP_BUSY_RETRY.pause(3, None) == HTTP_BUSY_RETRY.delay(3) == 2.0
    assert HTTP_BUSY_RETRY.pause(3, "soon") == 2.0
    assert HTTP_BUSY_RETRY.pause(20, None) == 30.0
