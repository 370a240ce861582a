"""What the staging proxy copies of a disk (``tasks.staging._areas``): the chunks the backup
will read, widened to whole chunks — never the chunks the plan records as zeros unread."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from vmkeep.storage.read_plan import BaseRef, ReadPlan
from vmkeep.tasks.staging import _areas

C = 1 << 20


def _disk(plan: ReadPlan, size: int) -> Any:
    return SimpleNamespace(plan=plan, disk=SimpleNamespace(capacity=size))


def test_staging_copies_what_the_backup_reads_and_not_the_swap() -> None:
    size = 10 * C + 4096  # a short last chunk
    full = ReadPlan(0, "full", "first backup")
    assert _areas(_disk(full, size), C) == [(0, size)]
    # the swap: bytes 2.5-7.25 MiB; whole chunks 3-6 are left out, 2 and 7 staged
    swap = [(2 * C + C // 2, 4 * C + 3 * C // 4)]
    assert _areas(_disk(full.without(swap), size), C) == [(0, 3 * C), (7 * C, 3 * C + 4096)]
    cbt = ReadPlan(0, "cbt", "incremental", extents=((C + 10, 5), (4 * C, 2 * C + 1), (10 * C, 1)),
                   base=BaseRef("p" * 64, 0))
    assert _areas(_disk(cbt, size), C) == [(C, C), (4 * C, 3 * C), (10 * C, 4096)]
    assert _areas(_disk(cbt.without(swap), size), C) == [(C, C), (10 * C, 4096)]
    # a swap area reaching the disk's end leaves out the short last chunk too
    assert _areas(_disk(full.without([(9 * C, C + 4096)]), size), C) == [(0, 9 * C)]
