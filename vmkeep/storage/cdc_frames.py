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
    chunker started at the beginning of ``before`` (the disk bytes just before the frame)."""
    lead = memoryview(before).nbytes
    size = memoryview(frame).nbytes
    buf: bytes | memoryview = bytes(before) + bytes(frame) if lead else frame
    cuts: list[int] = []
    pos = 0
    for piece in chunker.cut(buf):
        pos += piece.nbytes
        if lead < pos < lead + size:
            cuts.append(pos - lead)
    return cuts
