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
    lead = memoryview(before).nbytes
    start = 0
    cuts: list[int] = []
    if lead:
        # the chain's next cut lies at most ``max_size`` past its last cut (<= the edge): one
        # byte more, so that a cut there is not the buffer's end
        head = bytes(before) + bytes(view[: chunker.max_size + 1])
        pos = 0
        for piece in chunker.cut(head):
            pos += piece.nbytes
            if lead < pos < min(len(head), lead + size):
                start = pos - lead
                cuts.append(start)
                break
        else:
            return cuts  # the frame ends before the chain's next cut
    pos = start
    for piece in chunker.cut(view[start:]):
        pos += piece.nbytes
        if pos < size:
            cuts.append(pos)
    return cuts
