"""The CBT truth audit: does changed-block tracking tell the truth about what did *not* change?

A CBT incremental reads only the chunks touching the areas CBT reports as changed and copies every
other chunk from the previous restore point.  If CBT omits a written area (VMware shipped such
bugs, ESXi 6.0 era), every later restore point silently misses those blocks.  Before such a disk
is backed up, this module reads a sample of the chunks CBT calls unchanged and compares their
xxh3-128 with the previous restore point's chunk table (or with the all-zero fingerprint for
chunks an allocated-areas answer, ``changeId="*"``, called unallocated).

Sample (:func:`select_chunks`, deterministic for a given ``seed``):

* a seeded random ``percent`` of the disk's chunks (default 0.5 %, at least one chunk), drawn
  from the chunks CBT reports unchanged;
* the neighbours (the chunk before and the chunk after each range) of the chunk ranges the
  previous backup found changed — where an off-by-one or a lost tail write hides; when checking
  an allocated-areas answer, first chunk 0 (partition table: never empty on a used disk) and the
  edges of the reported areas;
* capped at ``cap_percent`` % of the disk in bytes (at least one chunk, so disks of fewer than
  20 chunks exceed 5 %); ``first`` chunks (chunk 0 for an allocated-areas check) come first, then
  the random part, and neighbours fill the rest of the budget.

The result (:class:`AuditResult`) is recorded per disk in the restore point under ``cbt_audit``
(see ``docs/format.md``): chunks sampled, bytes audited, mismatches and the first mismatching
offsets.  Any mismatch makes the disk *CBT-suspect*; what to do then (re-read the whole disk,
reset CBT, warn) is the caller's decision.  No Prefect and no vSphere here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from vmkeep.errors import UsageError
from vmkeep.storage.codec import ChunkHasher
from vmkeep.storage.disk_backup import ZERO_FP, chunks_touching
from vmkeep.storage.manifest import ChunkTable

Extent = tuple[int, int]
ChunkRange = tuple[int, int]  # [start, end) chunk numbers
#: the smallest audit budget, in chunks
MIN_CHUNKS = 1
#: chunk ranges of a backup's changes kept in a restore point (to find the next run's neighbours)
MAX_RANGES = 1024


@dataclass(frozen=True)
class AuditPolicy:
    """``percent``: random share of the disk's chunks; ``cap_percent``: budget in bytes as a
    share of the disk (never below ``percent``)."""

    percent: float = 0.5
    cap_percent: float = 5.0

    @classmethod
    def parse(cls, text: str | float | None) -> AuditPolicy | None:
        """``"off"`` → None; ``"0.5"`` / ``"0.5%"`` → that random share (the cap grows with it)."""
        if text is None:
            return cls()
        if isinstance(text, str) and text.strip().lower() in ("off", "no", "none", "0"):
            return None
        try:
            value = float(str(text).strip().rstrip("%"))
        except ValueError:
            raise UsageError(f"--cbt-audit wants off or a percentage, not {text!r}") from None
        if not 0 < value <= 100:
            raise UsageError(f"--cbt-audit percentage must be in (0, 100], not {value}")
        return cls(value, max(cls.cap_percent, value))

    def to_json(self) -> dict[str, Any]:
        return {"percent": self.percent, "cap_percent": self.cap_percent}


@dataclass
class AuditResult:
    """What one disk's audit did; ``expected`` says what unread chunks were compared with."""

    expected: Literal["previous point", "zeros"]
    seed: int
    chunks_sampled: int = 0
    bytes_audited: int = 0
    mismatches: int = 0
    mismatch_offsets: list[int] = field(default_factory=list)  # the first few
    duration_s: float = 0.0

    @property
    def suspect(self) -> bool:
        return self.mismatches > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "result": "mismatch" if self.suspect else "ok",
            "expected": self.expected,
            "seed": self.seed,
            "chunks_sampled": self.chunks_sampled,
            "bytes_audited": self.bytes_audited,
            "mismatches": self.mismatches,
            "mismatch_offsets": self.mismatch_offsets,
            "duration_s": round(self.duration_s, 3),
        }


def changed_ranges(extents: Iterable[Extent], size: int, chunk_size: int) -> list[list[int]]:
    """The chunk ranges touching ``extents`` as ``[[start, end], …]`` (JSON-ready, at most
    ``MAX_RANGES``: the neighbours of the rest are not audited next time)."""
    out = []
    for span in chunks_touching(extents, size, chunk_size):
        out.append([span.start, span.stop])
        if len(out) >= MAX_RANGES:
            break
    return out


def neighbours(ranges: Sequence[Sequence[int]]) -> list[int]:
    """The chunk before and the chunk after each ``[start, end)`` range, in order."""
    return [i for start, end in ranges for i in (int(start) - 1, int(end))]


def select_chunks(
    nchunks: int,
    chunk_size: int,
    size: int,
    unread: Callable[[int], bool],
    priority: Sequence[int],
    policy: AuditPolicy,
    seed: int,
    first: Sequence[int] = (),
) -> list[int]:
    """The chunk numbers to audit (sorted): ``first``, the random part, then ``priority``
    chunks while the budget lasts; only chunks for which ``unread(i)`` is true."""
    budget = max(MIN_CHUNKS, math.floor(size * policy.cap_percent / 100 / chunk_size))
    want_random = max(1, round(nchunks * policy.percent / 100))
    rng = random.Random(seed)
    chosen = {i for i in first if 0 <= i < nchunks and unread(i)}
    chosen = set(sorted(chosen)[:budget])
    want = min(len(chosen) + want_random, budget, nchunks)
    if want * 4 > nchunks:  # a large share: sample the unread chunks themselves
        candidates = [i for i in range(nchunks) if unread(i)]
        chosen.update(rng.sample(candidates, min(want, len(candidates))))
    else:  # rejection sampling over the disk (unread chunks are the vast majority)
        tries = 0
        while len(chosen) < want and tries < 20 * want + 100:
            tries += 1
            i = rng.randrange(nchunks)
            if unread(i):
                chosen.add(i)
    for i in priority:
        if len(chosen) >= budget:
            break
        if 0 <= i < nchunks and unread(i):
            chosen.add(i)
    return sorted(chosen)


def audit_chunks(
    pread: Callable[[int, int], bytes],
    chunks: Sequence[int],
    size: int,
    chunk_size: int,
    expected: Callable[[int], bytes],
    *,
    workers: int = 3,
) -> tuple[int, int, list[int]]:
    """Read ``chunks`` and compare their xxh3-128 with ``expected(i)``; returns
    ``(bytes read, mismatches, mismatching offsets)``."""

    def one(i: int) -> tuple[int, int, bool]:
        offset = i * chunk_size
        length = min(chunk_size, size - offset)
        data = pread(offset, length)
        return offset, length, ChunkHasher.fingerprint(data) != expected(i)

    nbytes, bad = 0, []
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="vmkeep-audit") as pool:
        for offset, length, differs in pool.map(one, chunks):
            nbytes += length
            if differs:
                bad.append(offset)
    return nbytes, len(bad), bad


def audit_disk(
    pread: Callable[[int, int], bytes],
    size: int,
    chunk_size: int,
    *,
    parent: ChunkTable | None,
    read_extents: Sequence[Extent],
    previous_ranges: Sequence[Sequence[int]],
    policy: AuditPolicy,
    seed: int,
    zeroed_ranges: Sequence[Sequence[int]] = (),
) -> AuditResult:
    """Audit one disk about to be backed up reading only ``read_extents`` (sample: see the
    module docstring).

    With ``parent`` (a CBT incremental) unread chunks must match the parent's fingerprints; without
    (a full read of allocated areas only) they must be all zeros.  ``zeroed_ranges``: the
    parent's chunk ranges recorded as zeros though the disk held swap there
    (:func:`~vmkeep.storage.disk_backup.zeroed_after`) — never sampled, they would differ.
    """
    started = time.monotonic()
    nchunks = (size + chunk_size - 1) // chunk_size
    read = bytearray(nchunks)
    for span in chunks_touching(read_extents, size, chunk_size):
        read[span.start : span.stop] = b"\1" * len(span)
    for start, end in zeroed_ranges:  # not comparable: treated as read
        start, end = max(0, int(start)), min(nchunks, int(end))
        if start < end:
            read[start:end] = b"\1" * (end - start)
    if parent is not None and (parent.size != size or len(parent) != nchunks):
        raise ValueError("the previous point's chunk table does not match the disk")
    table = parent

    def expected(i: int) -> bytes:
        fp = ZERO_FP if table is None else table.fp(i)
        # all-zero chunks a full read never read carry the ZERO_FP placeholder
        return _zero_fp(min(chunk_size, size - i * chunk_size)) if fp == ZERO_FP else fp

    priority = neighbours(previous_ranges)
    first: list[int] = []
    if parent is None:  # checking a "*" answer: the partition table, then the areas' edges
        spans = chunks_touching(read_extents, size, chunk_size)
        first = [0]
        priority = [*neighbours([(r.start, r.stop) for r in spans]), *priority]
    chosen = select_chunks(
        nchunks, chunk_size, size, lambda i: not read[i], priority, policy, seed, first
    )
    nbytes, mismatches, offsets = audit_chunks(pread, chosen, size, chunk_size, expected)
    return AuditResult(
        "previous point" if parent is not None else "zeros",
        seed,
        len(chosen),
        nbytes,
        mismatches,
        offsets[:16],
        time.monotonic() - started,
    )


_ZERO_FPS: dict[int, bytes] = {}


def _zero_fp(length: int) -> bytes:
    fp = _ZERO_FPS.get(length)
    if fp is None:
        fp = _ZERO_FPS.setdefault(length, ChunkHasher.fingerprint(bytes(length)))
    return fp


def disk_record(
    result: AuditResult | None, policy: AuditPolicy | None, mode: str
) -> dict[str, Any]:
    """A disk's ``cbt_audit`` object in the restore point (see docs/format.md)."""
    if result is not None:
        return dict(result.to_json(), **(policy.to_json() if policy else {}))
    if policy is None:
        return {"result": "off"}
    return {"result": "not applicable", "reason": f"{mode} read"}


def run_summary(
    audits: dict[int, AuditResult],
    suspects: set[int],
    policy: AuditPolicy | None,
    full_read: int,
    reset: bool,
) -> dict[str, Any]:
    """The run report's (and the point's ``meta``) ``cbt_audit`` object: ``status`` is ``ok``,
    ``mismatch``, ``off`` or ``not applicable``; ``share_of_full_read`` is the audit's bytes
    over the size of every disk backed up."""
    audited = sum(a.bytes_audited for a in audits.values())
    if policy is None:
        status = "off"
    elif suspects:
        status = "mismatch"
    else:
        status = "ok" if audits else "not applicable"
    return {
        "status": status,
        "suspect_disks": sorted(suspects),
        "cbt_reset": reset,
        "chunks_sampled": sum(a.chunks_sampled for a in audits.values()),
        "bytes_audited": audited,
        "mismatches": sum(a.mismatches for a in audits.values()),
        "share_of_full_read": round(audited / max(1, full_read), 5),
        "policy": policy.to_json() if policy else None,
    }
