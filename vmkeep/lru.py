"""The one least-recently-used cache of vmkeep: :class:`LRU`.

Used for decoded repository chunks (:mod:`vmkeep.storage.reader`), guest directory listings
(:mod:`vmkeep.disks.fs.base`) and snapshot-delta grain tables (:mod:`vmkeep.disks.vmdk.deltas`).

Contract:

- a mapping bounded by ``capacity``, counted in entries or, with ``weight``, in the sum of
  ``weight(value)`` (e.g. the number of names in a directory listing);
- :meth:`get` marks an entry most recently used; :meth:`put` inserts or replaces one and then
  forgets least recently used entries until the total fits — but always keeps the entry just
  put, even when it alone is heavier than ``capacity`` (a huge directory is still listed once);
- ``None`` is a value like any other (``get(key, default)`` tells a miss from a cached None);
- thread-safe: every method holds one lock for its own duration.  Loading a missing value is
  the caller's business and happens outside the lock (two threads may load the same key; the
  second ``put`` wins), so slow loads never serialise readers.

Why not a library: :func:`functools.lru_cache` caches a function's results, not a bounded map
shared by methods and threads, and ``cachetools.LRUCache`` refuses (``ValueError``) a value
heavier than its whole size and is not thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class LRU(Generic[K, V]):
    """A bounded, thread-safe LRU mapping (see the module docstring)."""

    def __init__(self, capacity: int, weight: Callable[[V], int] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._weight = weight
        self._items: OrderedDict[K, V] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        """The value of ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            try:
                value = self._items[key]
            except KeyError:
                return default
            self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Insert or replace ``key``, then forget the least recently used beyond ``capacity``."""
        with self._lock:
            old = self._items.pop(key, _MISSING)
            if old is not _MISSING:
                self._total -= self._size(old)  # type: ignore[arg-type]
            self._items[key] = value
            self._total += self._size(value)
            while self._total > self.capacity and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._total -= self._size(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0

    @property
    def total(self) -> int:
        """The current total: entries, or the sum of their weights."""
        return self._total

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def _size(self, value: V) -> int:
        return 1 if self._weight is None else self._weight(value)


_MISSING = object()
