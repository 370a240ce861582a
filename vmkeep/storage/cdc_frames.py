"""Where an image frame is cut into content-defined pieces (repository format 2 recipes).

A frame's pieces must lie inside the frame (a recipe lists whole pieces; manifests address
frames), but *where* inside it the cuts fall is the writer's choice — any cuts give a correct
recipe; the choice only decides what deduplicates.  :func:`frame_cuts` runs the repository's
FastCDC chunker over ``before`` (the ``lookback`` bytes of the disk just before the frame, when
the repository's ``image_cdc`` asks for them) followed by the frame, and keeps the cuts that fall
strictly inside the frame.  Without a lookback the chain of cuts restarts at the frame edge
(format 2 as first written): the piece that straddles the edge in another image is truncated
and the next one or two pieces differ until the chain re-synchronises with the content.  With a
lookback the chain has (almost always) re-synchronised before the edge, so the cuts inside the
frame are the stream's content-defined cuts: only the one piece straddling each edge is split.

Pure: the result depends only on the bytes given, so parallel workers and CBT incrementals (which
read a changed frame plus its lookback, never its neighbours' pieces) cut the same frame alike.
"""

from __future__ import annotations

from vmkeep.storage.cdc import Chunker


def frame_cuts(
    chunker: Chunker, frame: bytes | memoryview, before: bytes | memoryview = b""
) -> list[int]:
    """Offsets (ascending, ``0 < c < len(frame)``) where ``frame`` is cut into pieces, with the
    chunker started at the beginning of ``before`` (the disk bytes just before the frame).

    Only the first cut after the edge needs ``before``: a cut depends only on the bytes since
    the previous cut, so the rest of the frame is cut on its own from there (exactly what
    cutting ``before + frame`` gives, without copying the frame)."""
    view = memoryview(frame)
    size = view.nbytes
    start = 0
    cuts: list[int] = []
    if memoryview(before).nbytes:
        first = _first_cut(chunker, view, memoryview(before))
        if first is None:
            return cuts  # the frame ends before the chain's next cut
        start = first
        cuts.append(start)
    pos = start
    for piece in chunker.cut(view[start:]):
        pos += piece.nbytes
        if pos < size:
            cuts.append(pos)
    return cuts


def _first_cut(chunker: Chunker, frame: memoryview, before: memoryview) -> int | None:
    """The chain's first cut strictly inside ``frame`` (an offset into it), or ``None``.

    A cut that FastCDC finds before the end of the buffer it is given does not depend on how
    far the buffer goes on (it looks at no byte past the cut; a shorter buffer only ends the
    search sooner).  So the chain is run over ``before`` alone first — every piece but its last
    ends at a cut of the stream — and only the bytes from the chain's last cut there are copied,
    with the frame's first ``2 × avg`` bytes, into the chunker's scratch buffer; when the chain
    does not cut before that buffer's end, again with as much of the frame as the original
    buffer (``before`` + ``max + 1`` bytes of the frame) held.  Same cuts, without copying and
    allocating ``lookback + max`` bytes per frame.
    """
    lead = before.nbytes
    size = frame.nbytes
    chain = 0  # the last cut of the chain inside ``before`` (0: where the chain starts)
    for piece in chunker.cut(before):
        if chain + piece.nbytes >= lead:
            break  # the last piece ends where ``before`` does: not a cut
        chain += piece.nbytes
    tail = lead - chain
    # the chain's next cut lies at most ``max_size`` past its last cut (<= the edge): one byte
    # more, so that a cut there is not the buffer's end
    need = min(size, chunker.max_size + 1)
    takes = sorted({min(need, 2 * chunker.avg_size), need})
    for take in takes:
        head = chunker.scratch(tail + take)
        head[:tail] = before[chain:]
        head[tail:] = frame[:take]
        pos = chain
        for piece in chunker.cut(head):
            pos += piece.nbytes
            if pos - chain >= tail + take:
                break  # the buffer's end, not a cut: try with more of the frame
            if pos > lead:
                return pos - lead  # < ``take``: strictly inside the frame
        if take == need:
            return None
    return None
