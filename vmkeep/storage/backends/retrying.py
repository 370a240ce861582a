"""Bounded retries of transient target failures (kopia's ``retrying`` wrapper, in Python).

Every method is retried when it raises an error marked transient (``TargetUnreachable``: a
connection reset, a stalled upload that timed out, a 5xx from an object store), under
:data:`vmkeep.retry.STORAGE_RETRY` (exponential backoff: ``base``, ``2·base``, … capped at ``cap``
seconds, at most ``attempts`` tries); then the last error is raised.  Non-transient errors
(``ObjectNotFound``, ``TargetFull``, ``TargetPermissionDenied``, ``ValueError``) are raised at
once.

Retrying is safe because every method is idempotent: ``put`` writes the whole object again under
a fresh temporary name (or a single PUT) — a failed attempt never publishes anything under the
final name — and ``delete`` of a missing object succeeds.  ``list`` restarts from scratch.
Before each retry the inner backend's ``reconnect()`` (if any) replaces a broken connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from vmkeep.retry import STORAGE_RETRY, RetryPolicy
from vmkeep.storage.backend import Backend, WrappingBackend

T = TypeVar("T")


class RetryingBackend(WrappingBackend):
    """Wraps ``inner``; see the module docstring."""

    def __init__(
        self,
        inner: Backend,
        attempts: int = STORAGE_RETRY.attempts,
        base: float = STORAGE_RETRY.delay_s,
        cap: float = STORAGE_RETRY.cap_s,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(inner)
        self.policy = RetryPolicy(
            retries=max(1, attempts) - 1, delay_s=base, backoff=STORAGE_RETRY.backoff, cap_s=cap
        )
        self.sleep = sleep
        self.retries = 0

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return self.policy.call(fn, what=what, before_retry=self._reconnect, sleep=self.sleep)

    def _reconnect(self, retry: int, exc: BaseException) -> None:
        self.retries += 1
        reconnect = getattr(self.inner, "reconnect", None)
        if callable(reconnect):
            reconnect()  # still down: the policy logs it, the next attempt reports it

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._call(f"put {key}", lambda: self.inner.put(key, data))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, offset, length))

    def size(self, key: str) -> int:
        return self._call(f"size {key}", lambda: self.inner.size(key))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def list_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list_times(prefix))))

    def list_temporary(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        return iter(
            self._call(f"list temporary {prefix}", lambda: list(self.inner.list_temporary(prefix)))
        )

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))
