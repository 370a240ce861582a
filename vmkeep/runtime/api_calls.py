"""vmkeep's own Prefect API calls, retried quickly when the server is briefly busy.

A Prefect server on SQLite answers ``503 Service Unavailable`` when its database is locked for a
moment (it is, often: the same run's task-run events are being written).  Prefect's client then
sleeps ``2 ** attempt`` seconds (≈ 2 s, jittered) before asking again — measured 1.9–2.4 s on the
global-concurrency acquisition of one-VM CLI runs, where the lock had cleared within
milliseconds.  :func:`quick` runs one of vmkeep's calls (slot leases, artifacts) with Prefect's
retries off and retries the same answers Prefect does (408, 429, 502, 503, connection
failures, and the transport errors of a connection the server dropped) itself, after 0.05,
0.1, 0.2 … s (at most 1.6 s apart, honouring a ``Retry-After`` the server sends) for up to
:data:`DEADLINE_S`; then the last error is raised.  A 503 means the server's transaction was
rolled back, so repeating a create is safe; after a dropped connection the first attempt may
have been done: a release asked again is answered as the first (the server's lease release is
idempotent, tested), an acquisition asked again may hold a second lease until it expires.

Prefect's own calls (flow-run creation, state changes) keep Prefect's policy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: statuses Prefect's client retries, and so do we
RETRY_STATUSES = frozenset({408, 429, 502, 503})
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 1.6
DEADLINE_S = 30.0

_NO_RETRY_SETTINGS: dict[int, Any] = {}  # id(current settings) -> a copy with retries off


_quick_calls = threading.local()  # .active: this thread is inside quick()


class _SleepAfterLastAttemptSkipped:
    """Stands in for the ``time`` module inside ``prefect.client.base``.

    Prefect's synchronous client sleeps its back-off (``2 ** attempt`` s, ≈ 2 s) after a
    retryable answer *before* checking whether another attempt is allowed — so with retries
    off it still sleeps 2 s after the one and only attempt (prefect 3.x,
    ``PrefectHttpxSyncClient._send_with_retry``).  Inside :func:`quick` (retries off, this
    thread) that sleep is skipped; everywhere else ``time`` behaves as itself."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if not getattr(_quick_calls, "active", False):
            time.sleep(seconds)


def _skip_prefects_last_sleep() -> None:
    import prefect.client.base as client_base

    if getattr(client_base, "time", None) is time:
        client_base.time = _SleepAfterLastAttemptSkipped()  # type: ignore[assignment]


@contextlib.contextmanager
def _prefect_retries_off() -> Iterator[None]:
    """Prefect's client makes one attempt per call in this block, and returns its answer at once
    (the settings copy is built once per settings object: building one costs milliseconds)."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    _skip_prefects_last_sleep()
    context = get_settings_context()
    key = id(context.settings)
    settings = _NO_RETRY_SETTINGS.get(key)
    if settings is None:
        settings = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        _NO_RETRY_SETTINGS.clear()  # one entry: the process's settings rarely change
        _NO_RETRY_SETTINGS[key] = settings
    _quick_calls.active = True
    try:
        with SettingsContext(profile=context.profile, settings=settings):
            yield
    finally:
        _quick_calls.active = False


def api_unreachable() -> tuple[str, str] | None:
    """``(api_url, why)`` when the configured Prefect API does not answer its health check
    (refused, timed out, no such host, an error status), else ``None``.  Asked only after a
    run failed with an error that is not vmkeep's own: Prefect then says "Failed to reach API"
    in a traceback, or an ``httpx`` error — a healthy run pays nothing."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from vmkeep.errors import network_reason

    url = str(PREFECT_API_URL.value() or "")
    try:
        with _prefect_retries_off(), get_client(sync_client=True) as client:
            failed = client.api_healthcheck()
    except Exception as exc:
        failed = exc
    if failed is None:
        return None
    cause: BaseException | None = failed
    while cause is not None:  # httpx wraps httpcore's error, which wraps the socket's
        if (reason := network_reason(cause)) is not None:
            return url, reason
        cause = cause.__cause__ or cause.__context__
    return url, str(failed).strip() or type(failed).__name__


def raise_if_unreachable(exc: BaseException, hint: str) -> None:
    """:class:`~vmkeep.errors.PrefectApiUnreachable` (from ``exc``, saying ``hint``: what to do)
    when ``exc`` — an error a run or a start-up ended with — is not vmkeep's own and the
    configured Prefect API does not answer (:func:`api_unreachable`); otherwise nothing: the
    caller re-raises ``exc`` as it is."""
    from vmkeep.errors import PrefectApiUnreachable, VmkeepError

    if not isinstance(exc, Exception) or isinstance(exc, VmkeepError):
        return
    if (unreachable := api_unreachable()) is not None:
        raise PrefectApiUnreachable(*unreachable, hint) from exc


def _retry_after(exc: BaseException) -> float | None:
    """Seconds to wait before the next attempt, or None when ``exc`` is not worth a retry."""
    import httpx

    # the transport errors Prefect's client retries (``prefect.client.base``, prefect 3.x): a
    # keep-alive connection the server closed as it was reused ("Server disconnected without
    # sending a response") once failed a VM's slot release in CI
    transport = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.PoolTimeout,
                 httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                 httpx.LocalProtocolError)
    if isinstance(exc, transport):
        return 0.0
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in RETRY_STATUSES:
        header = exc.response.headers.get("Retry-After")
        try:
            return float(header) if header is not None else 0.0
        except ValueError:
            return 0.0
    return None


def quick(call: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()`` (one or more Prefect client calls) with the quick retries described above."""
    delay, deadline = FIRST_DELAY_S, time.monotonic() + DEADLINE_S
    while True:
        try:
            with _prefect_retries_off():
                return call()
        except Exception as exc:
            asked = _retry_after(exc)
            if asked is None or time.monotonic() + delay > deadline:
                raise
            sleep(min(max(delay, asked), MAX_DELAY_S * 4))
            delay = min(delay * 2, MAX_DELAY_S)
