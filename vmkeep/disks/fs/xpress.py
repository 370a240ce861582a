"""XPRESS with Huffman coding ([MS-XCA] 2.1, "LZ77+Huffman"): how Windows compresses the chunks
of WOF-compressed files (CompactOS, ``compact /exe:xpress4k``), read by :mod:`.wof`.

Contract: :func:`decompress` returns exactly ``size`` bytes decoded from ``data`` (one chunk,
compressed on its own) or raises :class:`XpressError` — for a code table that is not a complete
prefix code, a match reaching before the output's start, or input that ends before ``size``
bytes.  It never reads past ``data``.

The decoding is driven by the expected size, as the format requires: the bit reader keeps up to
32 bits ahead of what it decoded, so the input can be used up while symbols remain (dissect's
``lzxpress_huffman``, which stops when its input is used up, drops a chunk's last bytes).
Every 64 KiB of output starts a new block with its own code table (256 bytes: 512 code lengths
of 4 bits, literal bytes 0–255 and match symbols 256–511).  Pure Python: slower than reading
an uncompressed file, enough for the system files CompactOS compresses.
"""

from __future__ import annotations

TABLE_BYTES = 256
BLOCK = 65536
MAX_BITS = 15


class XpressError(ValueError):
    """XPRESS data that does not decode (its reader turns it into a typed error)."""


def decompress(data: bytes, size: int) -> bytes:
    """The ``size`` bytes that chunk ``data`` decodes to (module docstring)."""
    out = bytearray()
    append = out.append
    end = len(data)
    src = data + bytes(8)  # reads past the end see zeros, as the bit reader expects
    pos = 0
    while len(out) < size:
        if pos + TABLE_BYTES > end:
            raise XpressError(f"input ends in a code table at byte {pos}")
        table = _decoding_table(data[pos:pos + TABLE_BYTES])  # symbol << 4 | code length
        pos += TABLE_BYTES
        bits = src[pos + 1] << 24 | src[pos] << 16 | src[pos + 3] << 8 | src[pos + 2]
        pos += 4
        extra = 16
        block_end = min(size, len(out) + BLOCK)
        produced = len(out)
        while produced < block_end:
            if pos > end + 4:  # the bit reader ran past the input: it was cut short
                raise XpressError("input ends before the output is complete")
            entry = table[bits >> 17]
            n = entry & 15
            symbol = entry >> 4
            bits = (bits << n) & 0xFFFFFFFF
            extra -= n
            if extra < 0:
                bits |= (src[pos + 1] << 8 | src[pos]) << -extra
                extra += 16
                pos += 2
            if symbol < 256:
                append(symbol)
                produced += 1
                continue
            symbol -= 256
            length, offset_bits = symbol & 15, symbol >> 4
            if length == 15:
                if pos >= end:
                    raise XpressError("input ends in a match length")
                length = src[pos]
                pos += 1
                if length == 255:
                    if pos + 2 > end:
                        raise XpressError("input ends in a match length")
                    length = src[pos + 1] << 8 | src[pos]
                    pos += 2
                    if length < 15:
                        raise XpressError(f"match length {length} in a long form")
                    length -= 15
                length += 15
            length += 3
            offset = (bits >> (32 - offset_bits) if offset_bits else 0) + (1 << offset_bits)
            bits = (bits << offset_bits) & 0xFFFFFFFF
            extra -= offset_bits
            if extra < 0:
                bits |= (src[pos + 1] << 8 | src[pos]) << -extra
                extra += 16
                pos += 2
            if offset > produced:
                raise XpressError(f"a match {offset} bytes back, at output byte {produced}")
            start = produced - offset
            if offset >= length:
                out += out[start:start + length]
            else:  # overlapping: the match repeats its own output
                whole, rest = divmod(length, offset)
                out += out[start:produced] * whole + out[start:start + rest]
            produced += length
    return bytes(out[:size])


def _decoding_table(raw: bytes) -> list[int]:
    """The ``2**15``-entry table mapping the next 15 bits to ``symbol << 4 | code length``,
    from a block's 256-byte table of 4-bit lengths (canonical Huffman codes)."""
    lengths = [0] * 512
    for i, byte in enumerate(raw):
        lengths[2 * i], lengths[2 * i + 1] = byte & 15, byte >> 4
    table = [0] * (1 << MAX_BITS)
    code = 0
    for length, symbol in sorted((n, symbol) for symbol, n in enumerate(lengths) if n):
        span = 1 << (MAX_BITS - length)
        if code + span > len(table):
            raise XpressError("its code table is over-subscribed")
        table[code:code + span] = [symbol << 4 | length] * span
        code += span
    if code != len(table):
        raise XpressError("its code table is incomplete")
    return table
