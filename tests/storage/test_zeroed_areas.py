"""A read plan's ``zeroed`` areas (the guest's swap): whole chunks recorded as zeros and never
read, in every mode; the chunks a CBT read takes from its base stay the base's; what each point
records (``zeroed_after``) keeps the next CBT audit from sampling them."""

from __future__ import annotations

from pathlib import Path

from tests.storage.storage_helpers import scribble
from vmkeep.storage import cbt_audit
from vmkeep.storage.disk_backup import (
    backup_disk,
    chunks_within,
    commit_point,
    subtract_ranges,
    zeroed_after,
)
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.read_plan import BaseRef, ReadPlan
from vmkeep.storage.repository import Repository

C = 64 * 1024  # the test repository's chunk size


class Reads:
    """A file opened for reading that remembers every ``pread``."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.offsets: list[tuple[int, int]] = []

    def pread(self, offset: int, length: int) -> bytes:
        self.offsets.append((offset, length))
        return self.data[offset : offset + length]

    def touched(self, start: int, end: int) -> bool:
        return any(o < end and o + n > start for o, n in self.offsets)


def _restored(repo: Repository, point_id: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"r-{point_id[:8]}.img"
    restore_disk(repo, repo.load_point(point_id), 0, str(out), overwrite=True)
    return out.read_bytes()


def test_chunk_arithmetic() -> None:
    size = 10 * C + 100
    # only whole chunks: 1.5 C .. 4 C covers chunks 2 and 3; adjacent extents join
    assert chunks_within([(C + C // 2, 2 * C + C // 2)], size, C) == [range(2, 4)]
    assert chunks_within([(2 * C, C), (3 * C, C)], size, C) == [range(2, 4)]
    assert chunks_within([(0, C - 1)], size, C) == []
    # the short last chunk counts when the area runs to the disk's end
    assert chunks_within([(9 * C, 2 * C)], size, C) == [range(9, 11)]
    assert chunks_within([(10 * C, 50)], size, C) == []
    assert subtract_ranges([range(0, 10)], [range(2, 4), range(6, 7)]) == [
        range(0, 2), range(4, 6), range(7, 10)]


def test_full_read_leaves_zeroed_chunks_unread(repo: Repository, image: Path,
                                               tmp_path: Path) -> None:
    size = image.stat().st_size
    data = image.read_bytes()
    area = (5 * C + 10, 8 * C)  # whole chunks 6..12; chunk 5 and 13 are kept (partial)
    source = Reads(image)
    result = backup_disk(repo, source, size, plan=ReadPlan(1, "full", "x", zeroed=(area,)))
    point = commit_point(repo, "img", [result])
    assert not source.touched(6 * C, 13 * C) and source.touched(5 * C, 6 * C)
    assert result.stats.bytes_excluded == 7 * C
    got = _restored(repo, point.id, tmp_path)
    assert got[6 * C : 13 * C] == bytes(7 * C)
    assert got[: 6 * C] == data[: 6 * C] and got[13 * C :] == data[13 * C :]


def test_cbt_read_zeroes_only_what_it_reads(repo: Repository, image: Path,
                                            tmp_path: Path) -> None:
    size = image.stat().st_size
    with open(image, "rb") as f:
        first = backup_disk(repo, f, size, plan=ReadPlan(1, "full", "x"))
    p1 = commit_point(repo, "img", [first])
    scribble(image, [(2 * C, 3 * C), (20 * C, 10)])  # chunks 2-4 and 20 changed
    data = image.read_bytes()
    swap = ((3 * C, 4 * C),)  # chunks 3..6: 3, 4 changed (zeroed), 5, 6 unchanged (the base's)
    plan = ReadPlan(1, "cbt", "x", ((2 * C, 3 * C), (20 * C, 10)), BaseRef(p1.id, 0),
                    zeroed=swap)
    source = Reads(image)
    second = backup_disk(repo, source, size, parent=p1.chunks[0], plan=plan)
    p2 = commit_point(repo, "img", [second], parent=p1.id)
    got = _restored(repo, p2.id, tmp_path)
    assert got[2 * C : 3 * C] == data[2 * C : 3 * C]
    assert got[3 * C : 5 * C] == bytes(2 * C)
    assert got[5 * C : 7 * C] == data[5 * C : 7 * C]  # unchanged: still the base's bytes
    assert second.stats.bytes_excluded == 2 * C and not source.touched(3 * C, 5 * C)
    # recorded: chunks 3, 4 now; with an earlier record 5..8, the unread 5..8 stay recorded and
    # a chunk read again (20) leaves the record
    assert zeroed_after(plan, size, C) == [[3, 5]]
    assert zeroed_after(plan, size, C, [[5, 8], [20, 21]]) == [[3, 8]]
    full = ReadPlan(1, "full", "x", zeroed=swap)
    assert zeroed_after(full, size, C, [[40, 41]]) == [[3, 7]]  # no base: only its own


def test_the_audit_does_not_sample_recorded_zeros(repo: Repository, image: Path) -> None:
    size = image.stat().st_size
    nchunks = -(-size // C)
    plan = ReadPlan(1, "full", "x", zeroed=((0, size),))  # every chunk recorded as zeros
    with open(image, "rb") as f:
        first = backup_disk(repo, f, size, plan=plan)
    p1 = commit_point(repo, "img", [first])
    recorded = zeroed_after(plan, size, C)
    assert recorded == [[0, nchunks]]
    policy = cbt_audit.AuditPolicy(100.0, 100.0)
    data = image.read_bytes()

    def pread(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    kwargs = dict(parent=p1.chunks[0], read_extents=[(0, C)], previous_ranges=[],
                  policy=policy, seed=1)
    lying = cbt_audit.audit_disk(pread, size, C, **kwargs)  # type: ignore[arg-type]
    assert lying.mismatches > 0  # the disk is not the zeros the point holds
    honest = cbt_audit.audit_disk(pread, size, C, zeroed_ranges=recorded, **kwargs)  # type: ignore[arg-type]
    assert honest.mismatches == 0 and honest.chunks_sampled == 0
