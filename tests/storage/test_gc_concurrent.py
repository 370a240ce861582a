"""GC v2: prune beside backups and readers, deterministically interleaved through prune's steps.

Backups run in-process on their own :class:`Repository` objects (their own leases), started
before prune and committed inside prune's ``step`` hook at every phase, or started and committed
entirely inside it; they back up data whose chunks are exactly those prune is deleting (the
forgotten point's).  No wall clock: the order is fixed by the hook, time moves by ``clock``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.storage.storage_helpers import restored_sha, scribble, sha, write_image
from vmkeep import clock
from vmkeep.storage import gc, locks
from vmkeep.storage.checker import check_repository
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.errors import LeaseExpired
from vmkeep.storage.forget import forget_by_policy, forget_ids
from vmkeep.storage.pack import pack_id_from_key
from vmkeep.storage.prune import prune
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import Policy

ZERO = timedelta(0)
STEPS = ["locked", "marked", "planned", "repack-pack-written", "index-written", "indexed",
         "index-deleted", "recorded", "pack-deleted", "done"]  # fmt: skip


class Backup:
    """A backup split in two: :meth:`start` (lease, index, data stored), :meth:`commit`."""

    def __init__(self, location: str, path: Path, name: str) -> None:
        self.repo = Repository.open(location)
        self.path, self.name = path, name
        self.lease: Any = None
        self.result: Any = None

    def start(self) -> None:
        self.lease = self.repo.lock("shared", refresh=0)
        with open(self.path, "rb") as f:
            self.result = backup_disk(self.repo, f, self.path.stat().st_size)

    def commit(self) -> str:
        self.lease.ensure()
        point = commit_point(self.repo, self.name, [self.result])
        self.lease.release()
        return point.id

    def run(self) -> str:
        self.start()
        return self.commit()


def _setup(tmp_path: Path) -> tuple[Repository, Path, Path, str]:
    """A repository with a forgotten point whose chunks prune will delete; ``old`` holds the
    forgotten point's data (backups of it deduplicate against exactly those chunks)."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    repo.config.pack_size = 256 * 1024
    img = write_image(tmp_path / "a.img", size=2 << 20, seed=3)
    old = tmp_path / "old.img"
    shutil.copy(img, old)
    with open(img, "rb") as f:
        first = commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)])
    scribble(img, [(0, 700_000), (1_200_000, 300_000)], seed=5)
    with open(img, "rb") as f:
        kept = commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)])
    forget_ids(repo, [first.id])
    repo.close()
    return repo, img, old, kept.id


def _verify(location: str, expected: dict[str, str], tmp_path: Path) -> None:
    _verify_with(location, {}, expected, tmp_path)


def _verify_with(
    location: str, options: dict[str, Any], expected: dict[str, str], tmp_path: Path
) -> None:
    """``check --read-data`` is clean and every point of ``expected`` restores bit-identically."""
    fresh = Repository.open(location, options)
    report = check_repository(fresh, read_data=True)
    assert report.ok, report.to_json()
    for point_id, digest in expected.items():
        assert restored_sha(fresh, point_id, tmp_path) == digest, point_id[:8]
    fresh.close()


@pytest.mark.parametrize("at", STEPS)
def test_backups_dedupe_against_what_prune_deletes_at_every_step(tmp_path: Path, at: str) -> None:
    repo, img, old, kept = _setup(tmp_path)
    location = repo.backend.location
    early = Backup(location, old, "early")  # loaded the index before prune: dedupes fully
    early.start()
    late = Backup(location, old, "late")  # starts inside prune
    points: dict[str, str] = {kept: sha(img)}
    seen: list[str] = []

    def step(name: str) -> None:
        seen.append(name)
        if name == at and at not in seen[:-1]:
            points[early.commit()] = sha(old)
            points[late.run()] = sha(old)

    pruner = Repository.open(location)
    first = prune(pruner, grace=ZERO, repack_below=0.9, step=step)
    if at not in seen:  # this run never reached that phase: commit after it
        points[early.commit()] = sha(old)
        points[late.run()] = sha(old)
    early.repo.close()
    late.repo.close()
    _verify(location, points, tmp_path)
    second = prune(Repository.open(location), grace=ZERO, repack_below=0.9)
    _verify(location, points, tmp_path)
    if at != "locked":  # committed after the mark: prune saw the forgotten chunks as garbage
        acted = sum(
            r.packs_held_by_leases + r.packs_revived + r.packs_unlisted + r.packs_deleted
            for r in (first, second)
        )
        assert acted > 0


def test_forget_and_prune_with_defaults_free_the_forgotten_unique_data(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    repo.config.pack_size = 512 * 1024
    img = write_image(tmp_path / "a.img", size=3 << 20, seed=4)
    ids = []
    for i in range(6):
        scribble(img, [(i * 400_000, 400_000)], seed=40 + i)
        with open(img, "rb") as f:
            ids.append(commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)]).id)
    before = sum(size for _, size in repo.backend.list("packs"))
    forget_ids(repo, ids[:4])
    repo.close()
    report = prune(Repository.open(repo.backend.location), grace=ZERO)  # default repacking
    after = sum(size for _, size in repo.backend.list("packs"))
    assert report.bytes_freed == before - after > 0
    from vmkeep.storage.stats import repository_stats

    stats = repository_stats(Repository.open(repo.backend.location), grace=ZERO)
    # what is left is what the two kept points reference, give or take the 10 % allowance
    assert stats.unreferenced_bytes <= 0.1 * after + 1
    assert after <= stats.referenced_bytes * 1.12
    _verify(repo.backend.location, {}, tmp_path)


def test_a_backup_that_outlives_its_lease_refuses_to_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _img, old, kept = _setup(tmp_path)
    location = repo.backend.location
    start = clock.now()
    with clock.frozen(start):
        # the backup runs on another host: prune cannot ask whether it is alive
        monkeypatch.setattr(locks.socket, "gethostname", lambda: "elsewhere")
        backup = Backup(location, old, "slow")
        backup.start()
        monkeypatch.undo()
    with clock.frozen(start + timedelta(hours=1)):  # no refresh for an hour: judged stale
        report = prune(Repository.open(location), grace=ZERO, repack_below=0.9)
        assert report.packs_deleted > 0 and report.packs_held_by_leases == 0
        with pytest.raises(LeaseExpired) as err:
            backup.commit()
        assert err.value.exit_code == 11
    _verify(location, {kept: sha(tmp_path / "a.img")}, tmp_path)
    assert [p.name for p in Repository.open(location).list_points()] == ["a"]


def test_mount_and_restore_survive_a_full_repack(tmp_path: Path) -> None:
    """#24.2: readers that loaded the index before prune keep reading while it repacks all."""
    repo, img, _old, kept = _setup(tmp_path)
    location = repo.backend.location
    reader_repo = Repository.open(location)
    point = reader_repo.load_point(kept)
    reader = PointReader(reader_repo, point, cache_chunks=1)
    size = reader.size
    expected = img.read_bytes()
    half = size // 2
    assert reader.pread(0, 4096) == expected[:4096]  # the index is loaded: a lease is held
    restorer = Repository.open(location)
    restorer.index  # noqa: B018  (a restore that loaded the index before prune)
    report = prune(Repository.open(location), grace=ZERO, repack_below=1.0)
    assert report.packs_repacked > 0 and report.packs_held_by_leases > 0
    # every read still succeeds: old packs are kept while the leases live
    for offset in range(0, size, 100_000):
        assert reader.pread(offset, 70_000) == expected[offset : offset + 70_000]
    assert restored_sha(restorer, kept, tmp_path) == sha(img)
    assert reader.pread(half, 1) == expected[half : half + 1]
    reader.close()
    reader_repo.close()
    restorer.close()
    again = prune(Repository.open(location), grace=ZERO, repack_below=1.0)
    assert again.packs_deleted >= report.packs_held_by_leases
    _verify(location, {kept: sha(img)}, tmp_path)


def test_exclusive_operations_make_leases_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup's lease waits for a key change or upgrade (bounded) instead of failing."""
    repo = Repository.init(str(tmp_path / "repo"))
    exclusive = repo.lock("exclusive")
    refused = threading.Event()
    original = locks._try_acquire

    def attempt(*args: Any) -> Any:
        won, info = original(*args)
        if not won:
            refused.set()
        return won, info

    monkeypatch.setattr(locks, "_try_acquire", attempt)
    waiter = Repository.open(repo.backend.location)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(waiter.lock("shared", wait=600)))
    thread.start()
    assert refused.wait(600)  # it tried, met the exclusive lock, and keeps waiting
    assert not got
    exclusive.release()
    thread.join(timeout=600)
    assert got and got[0].kind == "shared"
    got[0].release()
    assert locks.default_wait("shared") > 0 or "VMKEEP_LOCK_WAIT" in os.environ


KILLER = """
import os, signal, sys
from datetime import datetime, timedelta
from vmkeep import clock
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

target = sys.argv[2]

def step(name):
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)

with clock.frozen(datetime.fromisoformat(sys.argv[3])):  # the test's clock, moved in-process
    prune(Repository.open(sys.argv[1]), grace=timedelta(0), repack_below=0.9, step=step)
sys.exit(3)  # the step was never reached
"""


def _kill_prune_at(location: str, step: str, now: Any) -> int:
    env = dict(os.environ, VMKEEP_LOCK_WAIT="0")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, location, step, now.isoformat()],
        capture_output=True,
        env=env,
    )
    assert proc.returncode in (-9, 3), proc.stderr.decode()[-2000:]
    return proc.returncode


KILLS = [
    (first, second)
    for first in ("marked", "condemned")
    for second in ("repacked", "indexed", "index-deleted", "unlisted", "pack-deleted")
]


@pytest.mark.parametrize(("first", "second"), KILLS, ids=[f"{a}-then-{b}" for a, b in KILLS])
def test_kill_9_of_prune_while_a_backup_dedupes_against_its_garbage(
    tmp_path: Path, first: str, second: str
) -> None:
    """The first prune dies while the backup (an older lease) runs; the second one, after the
    backup committed, dies in the stage that unlists or deletes; a third finishes the job."""
    repo, img, old, kept = _setup(tmp_path)
    location = repo.backend.location
    now = clock.now()
    partial = tmp_path / "partial.img"  # shares only part of the forgotten point's chunks
    shutil.copy(old, partial)
    scribble(partial, [(0, 400_000)], seed=77)
    backup = Backup(location, partial, "early")
    backup.start()
    assert _kill_prune_at(location, first, now) == -9
    points = {kept: sha(img), backup.commit(): sha(partial)}
    backup.repo.close()
    _verify(location, points, tmp_path)
    later = now + timedelta(minutes=31)  # the killed prune's lock is stale (dead pid)
    assert _kill_prune_at(location, second, later) == -9
    _verify(location, points, tmp_path)
    with clock.frozen(later + timedelta(minutes=31)):
        prune(Repository.open(location), grace=ZERO, repack_below=0.9)
        final = prune(Repository.open(location), grace=ZERO, repack_below=0.9)
    assert final.packs_held_by_leases == 0 and final.missing_blobs == 0
    assert list(Repository.open(location).backend.list("gc")) == []
    _verify(location, points, tmp_path)


WORKER = """
import hashlib, io, json, random, sys
from datetime import timedelta
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.forget import forget_by_policy
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import Policy

url, options, role, rounds = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if role == "prune":  # until the backups are done (a stop file), at most ``rounds`` times
    import os
    for i in range(rounds):
        if os.path.exists(sys.argv[5]):
            break
        repo = Repository.open(url, options)
        if i % 2:
            forget_by_policy(repo, Policy(last=2))
        report = prune(repo, grace=timedelta(0), repack_below=0.9)
        print(json.dumps({"deleted": report.packs_deleted, "held": report.packs_held_by_leases}))
        repo.close()
else:
    rng = random.Random(role)
    data = bytearray(rng.randbytes(1 << 20))
    for i in range(rounds):
        at = rng.randrange(0, len(data) - 200_000)
        data[at : at + 200_000] = rng.randbytes(200_000)
        repo = Repository.open(url, options)
        with repo.lock("shared", refresh=0) as lease:
            result = backup_disk(repo, io.BytesIO(bytes(data)), len(data))
            lease.ensure()
            point = commit_point(repo, role, [result])
        repo.close()
        print(json.dumps({"point": point.id, "sha": hashlib.sha256(data).hexdigest()}), flush=True)
"""


#: backups: rounds each; prune: at most this many rounds, until the backups are done
ROUNDS = {"vm1": "4", "vm2": "4", "vm3": "4", "prune": "5000"}


def _race(url: str, options: dict[str, Any], tmp_path: Path) -> None:
    """3 backup processes and a forget+prune process, each looping a bounded number of times."""
    args = [json.dumps(options)]
    stop = tmp_path / "stop"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, *args, role, ROUNDS[role], str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, VMKEEP_LOCK_WAIT="0"),
        )
        for role in ("vm1", "vm2", "vm3", "prune")
    ]
    expected: dict[str, str] = {}
    deleted = prunes = 0
    outputs = []
    for proc in procs[:3]:
        outputs.append(proc.communicate(timeout=900))
    stop.touch()
    outputs.append(procs[3].communicate(timeout=900))
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]  # no backup failed, prune neither
        for line in out.decode().splitlines():
            row = json.loads(line)
            if "point" in row:
                expected[row["point"]] = row["sha"]
            else:
                deleted += row["deleted"]
                prunes += 1
    repo = Repository.open(url, options)
    left = {p.id for p in repo.list_points()}
    assert len(left) >= 6 and left <= set(expected)
    report = check_repository(repo, read_data=True)
    assert report.ok, report.to_json()
    for point_id in left:  # nothing lost: every point still listed restores bit-identically
        assert restored_sha(repo, point_id, tmp_path) == expected[point_id]
    # whatever the race left to delete, forgetting all but each chain's last point leaves
    # garbage (every round rewrote 200 kB of random data): the last prune, alone, deletes it
    forget_by_policy(repo, Policy(last=1))
    remaining = {p.id for p in repo.list_points()}
    repo.close()
    pruner = Repository.open(url, options)
    final = prune(pruner, grace=ZERO, repack_below=0.9)
    pruner.close()
    assert final.missing_blobs == 0
    assert final.packs_deleted > 0, (deleted, prunes)
    _verify_with(url, options, {p: expected[p] for p in remaining}, tmp_path)


def _init(url: str, options: dict[str, Any]) -> None:
    repo = Repository.init(url, options, image_chunk_size=64 * 1024, pack_size=256 << 10)
    repo.close()


def test_three_backups_and_prune_looping_on_a_local_repository(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    _init(url, {})
    _race(url, {}, tmp_path)


def test_three_backups_and_prune_looping_over_sftp(sftp_server: Any, tmp_path: Path) -> None:
    url, options = sftp_server.url(f"race-{tmp_path.name}"), sftp_server.options()
    _init(url, options)
    _race(url, options, tmp_path)


def test_a_backup_that_starts_while_the_condemnation_is_being_stored_never_loses_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#18: a record is stamped, then stored; a backup that takes its lease and loads the index
    in between does not see the record, so it deduplicates against the condemned packs.  Its
    lease must count as older than the record (the stamp must follow the put), else prune unlists
    and deletes packs the backup's point references.  The interleaving is forced by a hook in
    the pruner's ``put``; the clock ticks one millisecond per reading, so every stamp is
    distinct and ordered."""
    repo, img, old, kept = _setup(tmp_path)
    location = repo.backend.location
    ticks = [clock.now()]

    def ticking() -> Any:
        ticks[0] += timedelta(milliseconds=1)
        return ticks[0]

    monkeypatch.setattr(clock, "now", ticking)
    late = Backup(location, old, "late")
    pruner = Repository.open(location)
    put = pruner.backend.put
    started: list[str] = []

    def put_record(key: str, data: Any) -> None:
        if key.startswith("gc/") and b'"condemned"' in bytes(data) and not started:
            started.append(key)
            late.start()  # lease, records (none visible yet), index: dedupes against them all
        put(key, data)

    monkeypatch.setattr(pruner.backend, "put", put_record)
    first = prune(pruner, grace=ZERO, repack_below=0.9)
    assert started, "prune condemned nothing: the scenario did not happen"
    points = {kept: sha(img), late.commit(): sha(old)}
    late.repo.close()
    _verify(location, points, tmp_path)
    second = prune(Repository.open(location), grace=ZERO, repack_below=0.9)
    _verify(location, points, tmp_path)
    assert first.packs_unlisted == 0 and first.packs_held_by_leases > 0
    assert second.packs_revived > 0


def test_a_record_left_provisional_by_a_killed_prune_is_stamped_again_before_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune killed between a record's two puts leaves it ``provisional``, stamped before it
    was visible: a backup that loaded the index meanwhile (without the record) has a younger
    lease.  The next prune re-stamps such a record before judging leases by it."""
    repo, img, old, kept = _setup(tmp_path)
    location = repo.backend.location
    ticks = [clock.now()]

    def ticking() -> Any:
        ticks[0] += timedelta(milliseconds=1)
        return ticks[0]

    monkeypatch.setattr(clock, "now", ticking)
    plan = prune(Repository.open(location), grace=ZERO, repack_below=0.9, dry_run=True)
    doomed = {pack_id_from_key(k) for k in plan.to_delete + plan.to_repack}
    assert doomed
    stamped = clock.now()  # the killed prune read the clock, then ...
    late = Backup(location, old, "late")
    late.start()  # ... a backup loaded the index, then the first put landed and prune died
    repo.backend.put(
        "gc/" + "ab" * 16, gc.encode_record(stamped, doomed, gc.CONDEMNED, provisional=True)
    )
    first = prune(Repository.open(location), grace=ZERO, repack_below=0.9)
    assert first.packs_unlisted == 0 and first.packs_held_by_leases > 0
    (record,) = gc.load_records(Repository.open(location).backend)
    assert not record.provisional and record.time > late.lease.info.created
    points = {kept: sha(img), late.commit(): sha(old)}
    late.repo.close()
    prune(Repository.open(location), grace=ZERO, repack_below=0.9)
    _verify(location, points, tmp_path)


def test_a_backup_committing_between_prunes_pack_and_index_listings_keeps_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#18: a backup commits (a new pack, its index file, its point) while prune lists the
    packs and the index files.  On SFTP (whole-second times) with grace 0 its index file looks
    older than the grace, so prune rewrites it (the forgotten point's packs are unlisted); its
    entries must survive the rewrite even though its pack was stored after one of the listings.
    The commit is forced between the two listings, whichever prune does first, and the files
    the backup wrote get the second of prune's clock as their time (what SFTP reports)."""
    repo, img, _old, kept = _setup(tmp_path)
    location = repo.backend.location
    fresh = tmp_path / "fresh.img"
    shutil.copy(img, fresh)
    scribble(fresh, [(300_000, 500_000)], seed=91)  # new chunks: a new pack and index file
    late = Backup(location, fresh, "late")
    pruner = Repository.open(location)
    list_times = pruner.backend.list_times
    points = {kept: sha(img)}
    now = clock.now()
    listed: list[str] = []

    def listing(prefix: str) -> Any:
        if prefix in ("packs", "index"):
            listed.append(prefix)
        if listed in (["packs", "index"], ["index", "packs"]) and len(points) == 1:
            before = {k for k, _ in repo.backend.list("")}
            points[late.run()] = sha(fresh)
            second = float(int(now.timestamp()))
            for key in {k for k, _ in repo.backend.list("")} - before:
                os.utime(tmp_path / "repo" / key, (second, second))
        return list_times(prefix)

    monkeypatch.setattr(pruner.backend, "list_times", listing)
    with clock.frozen(now):
        report = prune(pruner, grace=ZERO, repack_below=0.9)
    assert len(points) == 2 and report.packs_unlisted > 0
    late.repo.close()
    _verify(location, points, tmp_path)


def test_a_backup_that_stores_a_condemned_pack_again_under_its_id_keeps_it(
    tmp_path: Path,
) -> None:
    """Pack ids are content hashes: a backup that stores the chunks of a condemned pack again,
    in the same order (the same disk backed up again after its point was forgotten), writes a
    pack with the *same* id.  With a multi-disk backup its index file exists long before its
    point: a prune in between must not unlist (and later delete) that pack."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10)
    gone, other = tmp_path / "gone.img", tmp_path / "other.img"
    gone.write_bytes(random.Random(31).randbytes(1 << 20))  # no chunk in common
    other.write_bytes(random.Random(32).randbytes(1 << 20))
    with open(gone, "rb") as f:
        forgotten = commit_point(repo, "gone", [backup_disk(repo, f, gone.stat().st_size)])
    with open(other, "rb") as f:
        kept = commit_point(repo, "other", [backup_disk(repo, f, other.stat().st_size)])
    forget_ids(repo, [forgotten.id])
    repo.close()
    location = repo.backend.location
    before = {k for k, _ in repo.backend.list("packs")}
    reader = Repository.open(location)
    assert len(reader.index) > 0  # an older lease: the condemnation cannot settle in run 1
    late = Backup(location, gone, "gone")
    started: list[bool] = []

    def step(name: str) -> None:
        if name == "condemned" and not started:
            started.append(True)
            late.start()  # after the condemnation: stores those chunks again, same packs

    first = prune(Repository.open(location), grace=ZERO, repack_below=0.9, step=step)
    assert started and first.packs_unlisted == 0
    assert {k for k, _ in repo.backend.list("packs")} == before  # the very same pack ids
    reader.close()
    second = prune(Repository.open(location), grace=ZERO, repack_below=0.9)  # point not yet in
    points = {kept.id: sha(other)}

    def commit_after_the_mark(name: str) -> None:
        if name == "marked" and len(points) == 1:
            points[late.commit()] = sha(gone)
            late.repo.close()

    prune(Repository.open(location), grace=ZERO, repack_below=0.9, step=commit_after_the_mark)
    _verify(location, points, tmp_path)
    assert second.packs_revived > 0 and second.packs_unlisted == 0
