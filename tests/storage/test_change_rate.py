"""Unusual change warnings: the pure checks on made-up histories, and real image backups whose
guest data is suddenly rewritten with random bytes (what encryption by ransomware leaves)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from vmkeep.storage.change_rate import (
    MIN_HISTORY,
    Written,
    history,
    unusual_change,
)

MIB = 1 << 20


def test_a_volume_far_beyond_the_median_is_unusual() -> None:
    past = [Written(100 * MIB, 50 * MIB)] * 5
    [warning] = unusual_change(past, Written(900 * MIB, 400 * MIB), factor=5, min_bytes=MIB)
    assert warning.startswith("unusual change: 900 MiB of new data, 9x the median")
    assert unusual_change(past, Written(400 * MIB, 200 * MIB), factor=5, min_bytes=MIB) == []


def test_new_data_that_suddenly_does_not_compress_is_unusual() -> None:
    past = [Written(100 * MIB, 45 * MIB)] * 4
    [warning] = unusual_change(past, Written(120 * MIB, 120 * MIB), factor=5, min_bytes=MIB)
    assert warning.startswith("new data does not compress") and "against 45% usually" in warning
    # a VM whose data never compressed (a media archive) is not unusual when it does not
    incompressible = [Written(100 * MIB, 99 * MIB)] * 4
    assert unusual_change(incompressible, Written(120 * MIB, 120 * MIB), factor=5,
                          min_bytes=MIB) == []


def test_no_warning_without_history_below_the_floor_or_when_off() -> None:
    burst = Written(10_000 * MIB, 10_000 * MIB)
    short = [Written(MIB, MIB // 2)] * (MIN_HISTORY - 1)
    assert unusual_change(short, burst, factor=5, min_bytes=MIB) == []
    enough = [Written(MIB, MIB // 2)] * MIN_HISTORY
    assert len(unusual_change(enough, burst, factor=5, min_bytes=MIB)) == 2
    assert unusual_change(enough, burst, factor=5, min_bytes=20_000 * MIB) == []
    assert unusual_change(enough, burst, factor=0, min_bytes=MIB) == []
    quiet = [Written(0, 0)] * MIN_HISTORY  # nothing changed for days: any change is "x-fold"
    [warning] = unusual_change(quiet, Written(2 * MIB, MIB), factor=5, min_bytes=MIB)
    assert "after 3 incremental backups that added none" in warning


def test_history_is_the_newest_incrementals_only() -> None:
    class P:
        def __init__(self, i: int, parent: str | None) -> None:
            self.id, self.parent = str(i), parent
            self.disks = [{"bytes_new": i, "bytes_stored": i}]

    points = [P(0, None)] + [P(i, str(i - 1)) for i in range(1, 15)]
    assert [w.new for w in history(points, exclude="14")] == list(range(4, 14))


def _text(rng: random.Random, n: int) -> bytes:
    words = [b"invoice", b"customer", b"order", b"2026", b"total", b"ship", b"address"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def test_an_image_rewritten_with_random_bytes_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image backups of a text-holding disk, 1 % changing per run; then every byte is rewritten
    with random data: both warnings, in the job's summary."""
    from vmkeep.flows.run import run
    from vmkeep.jobs.backup_image import backup_image
    from vmkeep.jobs.specs import BackupImageSpec
    from vmkeep.storage.repository import Repository

    monkeypatch.setenv("VMKEEP_CHANGE_WARN_MIN_MIB", "1")
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=64 * 1024)
    rng = random.Random(5)
    image = tmp_path / "disk.img"
    image.write_bytes(_text(rng, 8 * MIB))
    spec = BackupImageSpec(repo=str(repo), path=str(image), name="fileserver")
    for i in range(5):
        with open(image, "r+b") as f:
            f.seek(rng.randrange(0, 8 * MIB - 100_000))
            f.write(_text(rng, 80_000))
        summary = run(backup_image, spec, orchestrate=False)
        assert summary["warnings"] == [], i
    image.write_bytes(os.urandom(8 * MIB))  # encrypted in place
    summary = run(backup_image, spec, orchestrate=False)
    assert [w.split(":")[0] for w in summary["warnings"]] == [
        "unusual change", "new data does not compress"]
    point = Repository.open(str(repo)).load_point(summary["id"])  # recorded in the point
    assert point.meta["warnings"] == summary["warnings"]
    from tests.restore.restore_helpers import run_cli

    code, out, err = run_cli("list", repo=repo)
    assert code == 0, err
    flagged = [line for line in out.splitlines() if "unusual-change" in line]
    assert len(flagged) == 1 and summary["id"][:8] in flagged[0]
