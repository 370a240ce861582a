"""The one LRU helper (:mod:`vmkeep.lru`): order, weights, cached ``None``, threads."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkeep.lru import LRU


def test_least_recently_used_goes_first() -> None:
    c: LRU[str, int] = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # "b" is now the oldest
    c.put("c", 3)
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


def test_cached_none_is_not_a_miss() -> None:
    c: LRU[int, str | None] = LRU(4)
    missing = object()
    assert c.get(1, missing) is missing
    c.put(1, None)
    assert c.get(1, missing) is None


def test_weights_and_an_oversized_entry_is_still_kept() -> None:
    c: LRU[str, list[int]] = LRU(10, weight=len)
    c.put("six", [0] * 6)
    c.put("four", [0] * 4)
    assert c.total == 10 and len(c) == 2
    c.put("three", [0] * 3)  # evicts "six"
    assert "six" not in c and c.total == 7
    c.put("huge", [0] * 50)  # heavier than the whole cache: alone, but kept
    assert len(c) == 1 and c.get("huge") is not None and c.total == 50
    c.put("huge", [0])  # replacing re-weighs
    assert c.total == 1
    with pytest.raises(ValueError):
        LRU(0)


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5)), max_size=200),
       st.integers(1, 12))
def test_total_bounded_and_matches_contents(ops: list[tuple[int, int]], capacity: int) -> None:
    c: LRU[int, bytes] = LRU(capacity, weight=len)
    for key, size in ops:
        c.put(key, bytes(size))
        assert c.total <= capacity or len(c) == 1
        assert c.get(key) == bytes(size)  # the entry just put is always there


def test_threads_keep_it_consistent() -> None:
    c: LRU[int, int] = LRU(64)

    def work(seed: int) -> None:
        for i in range(2000):
            k = (i * 7 + seed) % 200
            if c.get(k) is None:
                c.put(k, k)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == c.total <= 64
