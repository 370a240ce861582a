"""The stream views behind the backup-GPT and backup-boot-sector fallbacks and exFAT's valid
length: every read, wherever it starts and however long, equals the same read of the bytes
they stand for."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.disks.overlay import overlay, zero_tail


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_an_overlay_reads_as_the_patched_bytes(base: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(base)))
    patch = data.draw(st.binary(max_size=len(base) - at))
    expected = base[:at] + patch + base[at + len(patch) :]
    view = overlay(io.BytesIO(base), len(base), at, patch)
    for _ in range(5):
        pos = data.draw(st.integers(0, len(base) + 5))
        size = data.draw(st.integers(0, len(base) + 5))
        view.seek(pos)
        assert view.read(size) == expected[pos : pos + size]
    view.seek(-3, io.SEEK_END)
    assert view.read() == expected[-3:]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_a_zero_tail_reads_zeros_past_the_valid_length(base: bytes, data: st.DataObject) -> None:
    valid = data.draw(st.integers(0, len(base)))
    size = data.draw(st.integers(valid, len(base) + 50))
    expected = base[:valid] + bytes(size - valid)
    view = zero_tail(io.BytesIO(base), valid, size)
    for _ in range(5):
        pos = data.draw(st.integers(0, size + 5))
        n = data.draw(st.integers(0, size + 5))
        view.seek(pos)
        assert view.read(n) == expected[pos : pos + n]
