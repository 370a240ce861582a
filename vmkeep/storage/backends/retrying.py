"""Bounded retries of transient target failures (kopia's ``retrying`` wrapper, in Python).

Every method is retried when it raises an error marked transient (``TargetUnreachable``: a
connection reset, a stalled upload that timed out, a 5xx from an object store), with exponential
backoff: ``base``, ``2·base``, … capped at ``cap`` seconds, at most ``attempts`` tries; then the
last error is raised.  Non-transient errors (``ObjectNotFound``, ``TargetFull``,
``TargetPermissionDenied``, ``ValueError``) are raised at once.

Retrying is safe because every method is idempotent: ``put`` writes the whole object again under
a fresh temporary name (or a single PUT) — a failed attempt never publishes anything under the
final name — and ``delete`` of a missing object succeeds.  ``list`` restarts from scratch.
Before each retry the inner backend's ``reconnect()`` (if any) replaces a broken connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from vmkeep.errors import is_transient
from vmkeep.storage.backend import Backend

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingBackend(Backend):
    """Wraps ``inner``; see the module docstring."""

    def __init__(
        self,
        inner: Backend,
        attempts: int = 5,
        base: float = 0.5,
        cap: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.attempts = max(1, attempts)
        self.base = base
        self.cap = cap
        self.sleep = sleep
        self.retries = 0

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.base
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc) or attempt == self.attempts:
                    raise
                self.retries += 1
                log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.cap)
                reconnect = getattr(self.inner, "reconnect", None)
                if callable(reconnect):
                    try:
                        reconnect()
                    except Exception as again:  # still down: the next attempt reports it
                        log.warning("reconnect failed: %s", again)
        raise AssertionError("unreachable")

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

    def close(self) -> None:
        self.inner.close()
