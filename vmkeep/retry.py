"""The one retry policy of vmkeep: how often, how long apart, and which errors.

Every retry in vmkeep — a runtime step (:mod:`vmkeep.runtime`), a storage target call
(:mod:`vmkeep.storage.backends.retrying`), a vSphere SOAP call dropped by the network
(:mod:`vmkeep.vsphere.connection`), an HTTPS read of a datastore file or a busy (503) host
(:mod:`vmkeep.vsphere.httpclient`) — is described by a :class:`RetryPolicy` and paced by it:

* an operation runs once, then at most ``retries`` more times;
* the pause before retry *n* (1-based) is ``delay_s · backoff^(n-1)``, capped at ``cap_s``
  (``backoff=1``: a constant pause; ``2``: exponential);
* a server may ask for its own pause (HTTP ``Retry-After``, seconds or an HTTP date): it is
  honoured up to ``cap_s`` (:meth:`RetryPolicy.pause`);
* only errors for which the rule says so are retried: by default
  :func:`vmkeep.errors.is_transient` (the one transient rule); callers with their own
  classification (network drops, HTTP 5xx) pass ``retryable``.

:meth:`RetryPolicy.call` runs a callable under the policy.  Callers whose loop also does other
things between attempts (re-login, dropping a connection) keep their loop and ask the policy only
:meth:`RetryPolicy.pause` for the pause.  Sleeping goes through ``time.sleep`` looked up at call
time (or the ``sleep`` given), so tests replace it without waiting.

Why not tenacity: the whole policy is the handful of lines below, and vmkeep's loops (re-login
once, a separate budget for 503 "busy" answers) need the pause computation, not a decorator.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from vmkeep.errors import is_transient

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry ``retries`` times after the first attempt; pause ``delay_s · backoff^(n-1)``
    (at most ``cap_s``) before retry ``n``; only errors ``retryable`` accepts."""

    retries: int = 2
    delay_s: float = 5.0
    backoff: float = 1.0
    cap_s: float = 300.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.delay_s < 0 or self.backoff < 1 or self.cap_s < 0:
            raise ValueError(f"invalid retry policy {self!r}")

    @property
    def attempts(self) -> int:
        """How many times an operation runs at most."""
        return self.retries + 1

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1-based)."""
        if retry < 1:
            return 0.0
        return min(self.cap_s, self.delay_s * self.backoff ** (retry - 1))

    def delays(self) -> list[float]:
        """Every pause, in order (Prefect's ``retry_delay_seconds`` takes this list)."""
        return [self.delay(n) for n in range(1, self.retries + 1)]

    def pause(self, retry: int, retry_after: str | None = None) -> float:
        """The pause before retry ``retry`` when the server said ``Retry-After: retry_after``:
        the server's value (capped at ``cap_s``) when it is readable, else :meth:`delay`."""
        asked = parse_retry_after(retry_after)
        if asked is None:
            return self.delay(retry)
        return min(self.cap_s, asked)

    def should_retry(
        self,
        exc: BaseException,
        attempt: int,
        retryable: Callable[[BaseException], bool] = is_transient,
    ) -> bool:
        """True when attempt number ``attempt`` (1-based), which raised ``exc``, may be
        followed by another one."""
        return attempt <= self.retries and isinstance(exc, Exception) and retryable(exc)

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str = "operation",
        retryable: Callable[[BaseException], bool] = is_transient,
        before_retry: Callable[[int, BaseException], None] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> T:
        """``fn()``, retried under this policy; the last error is raised as it was.

        ``before_retry(n, exc)`` runs after the pause before retry ``n`` (reconnect, re-read);
        an error it raises is logged and the retry still happens (the next attempt reports).
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not self.should_retry(exc, attempt, retryable):
                    raise
                pause = self.delay(attempt)
                log.warning(
                    "%s failed (%s); retry %d of %d in %.1f s",
                    what, exc, attempt, self.retries, pause,
                )
                (sleep or time.sleep)(pause)
                if before_retry is not None:
                    try:
                        before_retry(attempt, exc)
                    except Exception as again:
                        log.warning("%s: before retry %d: %s", what, attempt, again)
        raise AssertionError("unreachable")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (RFC 9110: delay-seconds or an
    HTTP-date); ``None`` when absent or unreadable.  Never negative."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


#: steps of a job: two retries, 5 s apart (a short vCenter or target hiccup)
DEFAULT_RETRY = RetryPolicy()
#: steps that must never repeat (committing a restore point half-way)
NO_RETRY = RetryPolicy(retries=0, delay_s=0.0)
#: storage target calls (kopia's retrying wrapper): 5 attempts, 0.5 s doubling to 10 s
STORAGE_RETRY = RetryPolicy(retries=4, delay_s=0.5, backoff=2.0, cap_s=10.0)
#: idempotent SOAP calls whose connection dropped: 3 retries, 1 s doubling
SOAP_DROP_RETRY = RetryPolicy(retries=3, delay_s=1.0, backoff=2.0, cap_s=30.0)
#: HTTPS errors (drops, 5xx, short bodies) on datastore and guest transfers
HTTP_ERROR_RETRY = RetryPolicy(retries=4, delay_s=0.5, backoff=2.0, cap_s=30.0)
#: a busy (503) host or vCenter: waited out as long as it asks (``Retry-After``, capped 30 s)
HTTP_BUSY_RETRY = RetryPolicy(retries=120, delay_s=0.5, backoff=2.0, cap_s=30.0)
