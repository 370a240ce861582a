"""The XPRESS-Huffman decoder of WOF-compressed files (:mod:`vmkeep.disks.fs.xpress`) on bad
input: every failure is an :class:`XpressError`, never another exception, a hang, or more or
fewer bytes than asked for.  Good input — chunks wimlib compressed — is read in
``test_disks_ntfs_elsewhere.py``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.disks.fs.xpress import XpressError, decompress


def _table(lengths: dict[int, int]) -> bytes:
    """A block's 256-byte code table giving each symbol its code length (4 bits each)."""
    nibbles = [lengths.get(symbol, 0) for symbol in range(512)]
    return bytes(nibbles[2 * i] | nibbles[2 * i + 1] << 4 for i in range(256))


def test_literals_and_an_overlapping_match() -> None:
    # symbol 0x41 ('A') code 0, match symbol 256 (length 3, offset 1) code 1: bits 0 1 1
    data = _table({0x41: 1, 256: 1}) + (0b0110_0000_0000_0000).to_bytes(2, "little") + bytes(2)
    assert decompress(data, 7) == b"AAAAAAA"[:7]


def test_a_match_before_the_output_starts() -> None:
    data = _table({0x41: 1, 256: 1}) + b"\xff" * 8
    with pytest.raises(XpressError, match="bytes back"):
        decompress(data, 10)


@pytest.mark.parametrize(("lengths", "why"), [
    ({}, "incomplete"),
    ({0: 1}, "incomplete"),
    ({0: 1, 1: 1, 2: 1}, "over-subscribed"),
])
def test_code_tables_that_are_not_a_prefix_code(lengths: dict[int, int], why: str) -> None:
    with pytest.raises(XpressError, match=why):
        decompress(_table(lengths) + bytes(64), 100)


def test_input_that_ends_too_soon() -> None:
    with pytest.raises(XpressError, match="code table"):
        decompress(bytes(100), 10)
    with pytest.raises(XpressError, match="input ends"):  # literals past the end: cut short
        decompress(_table({0x41: 1, 0x42: 1}) + bytes(4), 4096)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=20_000))
def test_garbage_decodes_to_the_size_or_fails_typed(data: bytes, size: int) -> None:
    try:
        out = decompress(data, size)
    except XpressError:
        return
    assert len(out) == size
