"""A wrapper that injects failures into any backend method (a test tool, like kopia's faulty.go).

``FaultyBackend(inner).fail("put", when=lambda key: key.startswith("manifests/"), exc=...)``
makes matching calls raise; ``after`` lets the first N matching calls pass.  Partial-write faults
(``truncate=True`` on put) write a prefix of the data through the inner backend's *temporary*
path semantics by raising before publication — the inner backend's atomicity is what is tested.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmkeep.storage.backend import Backend, WrappingBackend
from vmkeep.storage.errors import TargetUnreachable


@dataclass
class Fault:
    method: str
    when: Callable[[str], bool]
    exc: Callable[[str], BaseException]
    after: int = 0
    times: int | None = None
    hits: int = 0
    fired: int = 0


class FaultyBackend(WrappingBackend):
    """Delegates to ``inner`` unless a registered :class:`Fault` matches the call."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def fail(
        self,
        method: str,
        when: Callable[[str], bool] = lambda key: True,
        exc: Callable[[str], BaseException] | None = None,
        after: int = 0,
        times: int | None = None,
    ) -> Fault:
        fault = Fault(
            method,
            when,
            exc or (lambda key: TargetUnreachable(key, "injected fault")),
            after,
            times,
        )
        self.faults.append(fault)
        return fault

    def _check(self, method: str, key: str) -> None:
        with self._lock:
            self.calls.append((method, key))
            for fault in self.faults:
                if fault.method != method or not fault.when(key):
                    continue
                fault.hits += 1
                if fault.hits <= fault.after:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                fault.fired += 1
                raise fault.exc(key)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._check("put", key)
        self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._check("get", key)
        return self.inner.get(key, offset, length)

    def size(self, key: str) -> int:
        self._check("size", key)
        return self.inner.size(key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        self._check("list", prefix)
        return self.inner.list(prefix)

    def list_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        self._check("list", prefix)
        return self.inner.list_times(prefix)

    def list_temporary(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        self._check("list_temporary", prefix)
        return self.inner.list_temporary(prefix)

    def delete(self, key: str) -> None:
        self._check("delete", key)
        self.inner.delete(key)
