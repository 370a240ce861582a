"""A repository's life, drawn at random: image backups (full, scan, CBT) of disks that change,
grow and shrink, file backups beside them, forget (by id — protected points refused — and by keep
rules), prune (also killed -9 half-way), passphrases rotated, backups killed -9 half-way, copies
into a second repository, index files lost and repaired, reopening, a lost index cache — and
after every step, every restore point that was not forgotten (and every copy) still restores
exactly what was backed up, by whole-disk restore and by random reads, and ``check --read-data``
finds nothing wrong; ``diff`` of two points reports exactly what changed (a file point's entries)
or covers every changed byte (a disk's); ``find`` finds every file where it is.

A Hypothesis state machine (``RuleBasedStateMachine``): the model is the bytes each disk held
and the files each tree held when each point was taken.  It looks for what no single test
names: an order of operations after which a point no longer restores.  ``VMKEEP_LIFE_EXAMPLES``
sets how many lives are drawn (default 12, about a minute).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.fast_kdf import fast_kdf
from tests.guestfiles.files_helpers import comparable, snapshot
from tests.storage.crash_helpers import prune_until_killed, run_until_killed
from tests.support.run_cli import VMKEEP
from vmkeep import clock
from vmkeep.browse.catalog import find as find_files
from vmkeep.browse.diff import diff_points
from vmkeep.guestfiles.backup import commit_file_point
from vmkeep.guestfiles.local import LocalSource
from vmkeep.guestfiles.restore import restore_paths
from vmkeep.jobs.copy_points import copy_points
from vmkeep.jobs.maintenance_specs import CopySpec
from vmkeep.runtime.local import LocalRuntime
from vmkeep.storage.checker import check_repository
from vmkeep.storage.crypto import add_key, remove_key
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.errors import WrongPassword
from vmkeep.storage.file_backup import backup_files
from vmkeep.storage.file_manifest import KIND as FILES
from vmkeep.storage.file_manifest import latest_file_point
from vmkeep.storage.forget import forget_by_policy, forget_ids
from vmkeep.storage.index_cache import cache_root
from vmkeep.storage.locks import DEFAULT_STALE_AFTER, remove_stale
from vmkeep.storage.protection import PointProtected, protect, unprotect
from vmkeep.storage.prune import prune
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repair import repair_index
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import Policy

__all__ = ["fast_kdf"]  # fixture

KIB = 1024
DISKS = ("alpha", "beta")
TREE = "tree"
#: zero grace: prune may delete what a forgotten point held at once (the lease rule still holds)
NO_GRACE = timedelta(0)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_changes(before: dict[str, Any], after: dict[str, Any]) -> set[tuple[str, str]]:
    """What ``diff`` must report between two file points, from the trees' snapshots: ``+``/``-``,
    ``T`` (another type), ``M`` (a file's content or a link's target), ``U`` (a file's mode or
    time only); directories never."""
    out = set()
    for rel in before.keys() | after.keys():
        a, b, path = before.get(rel), after.get(rel), "/" + rel
        if a is None or b is None:
            out.add(("+" if a is None else "-", path))
        elif a[0] != b[0]:
            out.add(("T", path))
        elif (a[0] == "symlink" and a[1] != b[1]) or (a[0] == "file" and a[3] != b[3]):
            out.add(("M", path))
        elif a[0] == "file" and a[1:3] != b[1:3]:
            out.add(("U", path))
    return out


class RepositoryLife(RuleBasedStateMachine):
    """One repository (and a copy destination) through a random sequence of operations."""

    def __init__(self) -> None:
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix="vmkeep-life-"))
        self.disks: dict[str, bytearray] = {}
        # what changed on each disk since its last backup (None: CBT lost, a resize), and that
        # backup: CBT answers for one point only, as vSphere's changeId does
        self.changed: dict[str, list[tuple[int, int]] | None] = {}
        self.changed_since: dict[str, str] = {}
        self.images: dict[str, str] = {}  # live image point id -> digest of its disk
        self.contents: dict[str, bytes] = {}  # image point id -> its disk's bytes (for diff)
        self.trees: dict[str, dict[str, Any]] = {}  # live file point id -> comparable snapshot
        self.copied: dict[str, str] = {}  # destination point id -> digest (image points)
        self.copied_trees: dict[str, dict[str, Any]] = {}  # destination id -> file snapshot
        self.protected: set[str] = set()
        self.taken: list[str] = []  # point ids in the order taken (ids differ run to run)
        self.rng = random.Random(0)
        self.dest: Repository | None = None
        self.restores = 0

    # -- set-up --------------------------------------------------------------------------------
    @initialize(chunk=st.sampled_from([64 * KIB, 128 * KIB]), encrypted=st.booleans(),
                seed=st.integers(0, 2**16))
    def create(self, chunk: int, encrypted: bool, seed: int) -> None:
        self.rng = random.Random(seed)
        self.password = "life-pass" if encrypted else None
        if encrypted:
            os.environ["VMKEEP_PASSWORD"] = self.password or ""
        self.repo = Repository.init(str(self.work / "repo"), image_chunk_size=chunk,
                                    pack_size=256 * KIB, password=self.password)
        self.chunk = chunk
        for name in DISKS:
            size = self.rng.randrange(2, 12) * chunk + self.rng.randrange(0, chunk)
            self.disks[name] = bytearray(size)
            self.changed[name] = []
            self._write(name, 0, self.rng.randbytes(size // 2))
            self.changed[name] = None  # the first backup is full anyway
        (self.work / TREE).mkdir()

    def teardown(self) -> None:
        os.environ.pop("VMKEEP_PASSWORD", None)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- the disks change ----------------------------------------------------------------------
    def _write(self, name: str, offset: int, data: bytes) -> None:
        disk = self.disks[name]
        data = data[: max(0, len(disk) - offset)]
        if not data:
            return
        disk[offset: offset + len(data)] = data
        changed = self.changed[name]
        if changed is not None:
            changed.append((offset, len(data)))

    @rule(name=st.sampled_from(DISKS), where=st.floats(0, 1), length=st.integers(1, 300 * KIB),
          kind=st.sampled_from(["random", "zeros", "text", "from-other", "shifted"]))
    def write(self, name: str, where: float, length: int, kind: str) -> None:
        """A guest writes: new data, zeros (a wiped area), text, data the other disk holds at
        another offset (an installed file), or its own data moved by a few bytes."""
        disk = self.disks[name]
        offset = int(where * len(disk))
        if kind == "random":
            data = self.rng.randbytes(length)
        elif kind == "zeros":
            data = bytes(length)
        elif kind == "text":
            data = (b"the same log line, again and again\n" * (length // 35 + 1))[:length]
        elif kind == "from-other":
            other = self.disks[DISKS[1 - DISKS.index(name)]]
            start = self.rng.randrange(0, max(1, len(other) - length))
            data = bytes(other[start: start + length])
        else:
            start = max(0, offset - self.rng.randrange(1, 5000))
            data = bytes(disk[start: start + length])
        self._write(name, offset, data)

    @rule(name=st.sampled_from(DISKS), factor=st.sampled_from([0.5, 0.9, 1.1, 1.7]))
    def resize(self, name: str, factor: float) -> None:
        """The disk is grown or shrunk (not necessarily to a chunk boundary): CBT is reset."""
        disk = self.disks[name]
        size = max(1, int(len(disk) * factor) + self.rng.randrange(0, 999))
        if size > len(disk):
            disk.extend(bytes(size - len(disk)))
        else:
            del disk[size:]
        self.changed[name] = None

    # -- backups -------------------------------------------------------------------------------
    @rule(name=st.sampled_from(DISKS), cbt=st.booleans(), workers=st.sampled_from([1, 3]))
    def back_up_disk(self, name: str, cbt: bool, workers: int) -> None:
        """An image backup: by CBT when the disk's changes since the latest point are known (and
        asked for: not when that point was forgotten since), else a scan against the latest
        point, else full."""
        parent = self.repo.latest_point(name)
        changed = None
        if cbt and parent is not None and self.changed_since.get(name) == parent.id:
            changed = self.changed[name]
        disk = self.disks[name]
        src = self.work / f"{name}.img"
        src.write_bytes(disk)
        with open(src, "rb") as f:
            result = backup_disk(self.repo, f, len(disk), parent=parent.chunks[0] if parent
                                 else None, changed=changed, workers=workers)
        point = commit_point(self.repo, name, [result], parent=parent.id if parent else None)
        if changed is not None and parent is not None and parent.chunks[0].size == len(disk):
            assert result.info.mode == "cbt", result.info
        self.images[point.id] = digest(disk)
        self.contents[point.id] = bytes(disk)
        self.taken.append(point.id)
        self.changed[name] = []
        self.changed_since[name] = point.id

    @rule(name=st.sampled_from(DISKS), step=st.sampled_from(["pack", "index", "manifest"]))
    def back_up_disk_killed(self, name: str, step: str) -> None:
        """``vmkeep backup image`` killed -9 right after its first pack, its index or its
        manifest is durable: a point exists exactly when its manifest was written, and the life
        goes on with the packs the dead run left.  Its lock stays until it turns stale, as
        restic's does (its PID may live on in a container under this host name); then the
        operator's ``vmkeep unlock`` removes it — here at once, the clock moved on."""
        self._write(name, self.rng.randrange(len(self.disks[name])), self.rng.randbytes(100 * KIB))
        src = self.work / f"{name}.img"
        src.write_bytes(self.disks[name])
        location = self.repo.backend.location
        before = set(self.repo.point_ids())
        # the life's own state folder: the licence counts each image path as a workload, and
        # every life's images are new paths (the community tier covers ten)
        env = dict(os.environ, VMKEEP_REPO=location, PREFECT_API_URL="",
                   VMKEEP_STATE_DIR=str(self.work / "state"))
        run_until_killed([*VMKEEP, "backup", "image", str(src), "--name", name], step, 1, env,
                         self.work)
        with clock.frozen(clock.now() + DEFAULT_STALE_AFTER + timedelta(minutes=1)):
            removed = remove_stale(self.repo.backend)
        assert [lock.kind for lock in removed] == ["shared"]  # the dead run's, and only it
        self.reopen()
        new = set(self.repo.point_ids()) - before
        if step != "manifest":
            assert not new, step
            return
        [point_id] = new
        self.images[point_id] = digest(self.disks[name])
        self.contents[point_id] = bytes(self.disks[name])
        self.taken.append(point_id)
        self.changed[name] = []
        self.changed_since[name] = point_id

    @rule(changes=st.lists(st.tuples(
        st.sampled_from(["add", "rewrite", "remove", "from-disk", "touch", "chmod", "symlink"]),
        st.integers(0, 7), st.integers(0, 200 * KIB)), min_size=1, max_size=5))
    def change_tree(self, changes: list[tuple[str, int, int]]) -> None:
        """Guest files change: content (some holding bytes a disk also holds: cross-kind
        dedupe), time or mode alone, removal, a file replaced by a symbolic link or back."""
        for action, file, length in changes:
            self._change_file(action, self.work / TREE / f"d{file % 3}" / f"f{file}", length)

    def _change_file(self, action: str, path: Path, length: int) -> None:
        if action == "remove" or (action == "symlink" and path.is_symlink()):
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(exist_ok=True)
        if action == "symlink":
            path.unlink(missing_ok=True)
            path.symlink_to(f"target-{length}")
            return
        if action in ("touch", "chmod"):
            if path.is_file() and not path.is_symlink():
                if action == "chmod":
                    path.chmod(0o600 if path.stat().st_mode & 0o044 else 0o644)
                else:
                    os.utime(path, ns=(self.rng.randrange(10**18),) * 2)
            return
        if action == "from-disk":
            disk = self.disks[DISKS[length % 2]]
            start = self.rng.randrange(0, max(1, len(disk) - length))
            data = bytes(disk[start: start + length])
        elif action == "rewrite" and path.is_file() and not path.is_symlink():
            old = bytearray(path.read_bytes())
            at = self.rng.randrange(0, len(old) + 1)
            old[at: at + 100] = self.rng.randbytes(100)
            data = bytes(old)
        else:
            data = self.rng.randbytes(length)
        if path.is_symlink():
            path.unlink()
        path.write_bytes(data)
        os.utime(path, ns=(self.rng.randrange(10**18), self.rng.randrange(10**18)))

    @rule()
    def back_up_tree(self) -> None:
        parent = latest_file_point(self.repo, TREE)
        source = self.work / TREE
        result = backup_files(self.repo, LocalSource(source), parent)
        assert not result.warnings, result.warnings
        point = commit_file_point(self.repo, TREE, result, source=str(source), client="life",
                                  parent=parent.id if parent else None)
        self.trees[point.id] = comparable(snapshot(source))
        self.taken.append(point.id)

    # -- maintenance ---------------------------------------------------------------------------
    def _live(self) -> list[str]:
        """Live points in the order taken: a pick by position must name the same point when
        Hypothesis replays the steps (ids hash the manifests' times, so they differ)."""
        return [p for p in self.taken if p in self.images or p in self.trees]

    @precondition(lambda self: bool(self._live()))
    @rule(pick=st.integers(0, 10**6), also=st.booleans())
    def forget(self, pick: int, also: bool) -> None:
        """Forget one point (or two); a protected one is refused and nothing is forgotten."""
        live = self._live()
        ids = [live[pick % len(live)]]
        if also and len(live) > 1:
            ids.append(live[(pick + 1) % len(live)])
        if self.protected & set(ids):
            with pytest.raises(PointProtected):
                forget_ids(self.repo, ids)
            return
        assert sorted(forget_ids(self.repo, ids)) == sorted(ids)
        for point_id in ids:
            self.images.pop(point_id, None)
            self.trees.pop(point_id, None)

    @precondition(lambda self: bool(self._live()))
    @rule(pick=st.integers(0, 10**6))
    def toggle_protection(self, pick: int) -> None:
        live = self._live()
        point_id = live[pick % len(live)]
        if point_id in self.protected:
            unprotect(self.repo, [point_id])
            self.protected.discard(point_id)
        else:
            protect(self.repo, [point_id], note="life")
            self.protected.add(point_id)

    @rule(repack_below=st.sampled_from([0.0, 0.5, 0.99]), max_unused=st.sampled_from([0.0, 0.3]))
    def prune(self, repack_below: float, max_unused: float) -> None:
        report = prune(self.repo, grace=NO_GRACE, repack_below=repack_below,
                       max_unused=max_unused)
        assert report.missing_blobs == 0, report.to_json()

    @rule(step=st.sampled_from(["planned", "repack-pack-written", "repacked", "index-written",
                                "indexed", "index-deleted", "pack-deleted", "catalog-deleted"]),
          repack_below=st.sampled_from([0.5, 0.99]))
    def prune_killed(self, step: str, repack_below: float) -> None:
        """``vmkeep prune`` killed -9 right after one of its steps (a repacked pack written, the
        new index written, an old index or pack deleted, ...), sharing this life's index cache:
        no point loses a byte, and the life goes on from what the dead run left — its lock
        removed once stale (the operator's ``vmkeep unlock``), the next prune finishes the job."""
        location = self.repo.backend.location
        self.repo.close()  # as every other command has ended: no reader lease of ours is left
        if prune_until_killed(location, step, 1, repack_below):
            with clock.frozen(clock.now() + DEFAULT_STALE_AFTER + timedelta(minutes=1)):
                removed = remove_stale(self.repo.backend)
            assert [lock.kind for lock in removed] == ["prune"]  # the dead run's, and only it
        self.reopen()

    @rule(lose=st.integers(0, 3))
    def repair(self, lose: int) -> None:
        """``repair index`` after ``lose`` index files were lost (deleted by hand, a target that
        lost objects): rebuilt from the packs, every point restores as before."""
        keys = sorted(key for key, _ in self.repo.backend.list("index"))
        for key in keys[:lose]:
            self.repo.backend.delete(key)
        repair_index(Repository.open(self.repo.backend.location, password=self.password))
        self.reopen()

    @precondition(lambda self: bool(self._live()))
    @rule(last=st.integers(1, 3))
    def forget_by_rules(self, last: int) -> None:
        """``forget --keep-last N``: per name, the newest N (and every protected point) stay."""
        decisions = forget_by_policy(self.repo, Policy(last=last))
        newest: dict[str, list[str]] = {}
        for d in sorted(decisions, key=lambda d: (d.point.time, d.point.id), reverse=True):
            newest.setdefault(d.point.name, []).append(d.point.id)
        kept = {d.point.id for d in decisions if d.keep}
        assert self.protected & set(self._live()) <= kept
        assert all(set(ids[:last]) <= kept for ids in newest.values())
        for d in decisions:
            if not d.keep:
                self.images.pop(d.point.id, None)
                self.trees.pop(d.point.id, None)

    @precondition(lambda self: getattr(self, "password", None) is not None)
    @rule()
    def rotate_passphrase(self) -> None:
        """``key add`` of a new passphrase, then ``key remove`` of the old key: the old one no
        longer opens the repository, the new one opens everything as before."""
        location = self.repo.backend.location
        self.repo.close()  # as every command but this one has ended: no lease of ours is left
        new = f"life-pass-{self.rng.randrange(1 << 30)}"
        old = Repository.open(location, password=self.password)
        assert old.master is not None
        with old.lock("exclusive", command="key add"):
            add_key(old.raw_backend, old.master, new)
        rotated = Repository.open(location, password=new)
        with rotated.lock("exclusive", command="key remove"):
            remove_key(rotated.raw_backend, old.key_id, rotated.key_id)
        with pytest.raises(WrongPassword):
            Repository.open(location, password=self.password)
        self.password = new
        os.environ["VMKEEP_PASSWORD"] = new  # the copy job reads it
        self.reopen()

    @rule()
    def reopen(self) -> None:
        self.repo = Repository.open(self.repo.backend.location, password=self.password)

    @rule()
    def lose_index_cache(self) -> None:
        root = cache_root()
        if root is not None:
            shutil.rmtree(root / self.repo.config.id, ignore_errors=True)
        self.reopen()

    @precondition(lambda self: bool(self.images))
    @rule()
    def copy(self) -> None:
        """``vmkeep copy`` of everything into a second repository with 1 MiB frames (the
        destination's copies are incremental against the earlier copies of the same name)."""
        dest = self.work / "dest"
        if self.dest is None:
            self.dest = Repository.init(str(dest))
        done = copy_points(CopySpec(repo=str(dest), from_repo=self.repo.backend.location),
                           LocalRuntime())
        assert done["failed"] == []
        for row in done["copied"]:
            if row["kind"] == FILES:
                self.copied_trees[row["id"]] = self.trees[row["source"]]
            else:
                self.copied[row["id"]] = self.images[row["source"]]

    @precondition(lambda self: len(self._live()) >= 2)
    @rule(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
    def diff(self, a: int, b: int) -> None:
        """``vmkeep diff A B`` of two points of one kind: a file point's entries added, removed,
        modified (content) or with new metadata only, exactly as the trees changed; a disk's
        changed bytes zero exactly when the content is the same, else covering every byte that
        differs."""
        images = [p for p in self._live() if p in self.images]
        trees = [p for p in self._live() if p in self.trees]
        pool = trees if len(trees) >= 2 and (a % 2 or len(images) < 2) else images
        if len(pool) < 2:
            return
        before = pool[a % len(pool)]
        after = pool[(a + 1 + b % (len(pool) - 1)) % len(pool)]  # another point
        result = diff_points(self.repo, before, after)
        if pool is trees:
            got = {(e.change, e.path) for e in result.entries}
            assert got == tree_changes(self.trees[before], self.trees[after])
            return
        [disk] = result.disks
        old, new = self.contents[before], self.contents[after]
        # the bytes of B that A does not hold at the same offset
        differing = (sum(x != y for x, y in zip(old, new, strict=False))
                     + max(0, len(new) - len(old)))
        assert differing <= disk.changed_bytes <= len(new)
        if old == new:
            assert disk.changed_bytes == 0

    @rule(file=st.integers(0, 7))
    def find(self, file: int) -> None:
        """``vmkeep find f<N>``: every live file point holding such a file, at each place; the
        image points' catalogs (of disks without a file system: empty) are built on the way and
        stored in the repository, which forget, prune and check must then live with."""
        name = f"f{file}"
        got = {(m.point.id, m.path) for m in find_files(self.repo, name)}
        expect = {(point_id, "/" + rel) for point_id, tree in self.trees.items()
                  for rel in tree if rel.rsplit("/", 1)[-1] == name}
        assert got == expect

    # -- what must hold ------------------------------------------------------------------------
    @invariant()
    def every_point_restores(self) -> None:
        if not hasattr(self, "repo"):
            return
        # each a process of its own: its reads end, and so does its reader lease
        with closing(Repository.open(self.repo.backend.location, password=self.password)) as fresh:
            assert sorted(fresh.point_ids()) == sorted(self._live())
            for point_id, expect in self.images.items():
                self._restores(fresh, point_id, expect)
            for point_id, expect in self.trees.items():
                self._restores_files(fresh, point_id, expect)
        if self.dest is not None:
            with closing(Repository.open(self.dest.backend.location)) as dest:
                for point_id, expect in self.copied.items():
                    self._restores(dest, point_id, expect)
                for point_id, tree in self.copied_trees.items():
                    self._restores_files(dest, point_id, tree)

    def _restores_files(self, repo: Repository, point_id: str, expect: dict[str, Any]) -> None:
        out = self.work / f"out-{self.restores}"
        self.restores += 1
        out.mkdir()
        assert restore_paths(repo, point_id, ["/"], out).ok
        assert comparable(snapshot(out)) == expect, point_id
        shutil.rmtree(out)

    def _restores(self, repo: Repository, point_id: str, expect: str) -> None:
        point = repo.load_point(point_id)
        out = self.work / "restored.img"
        restore_disk(repo, point, 0, str(out), overwrite=True)
        data = out.read_bytes()
        assert digest(data) == expect, f"{point.short_id} restores other bytes"
        reader = PointReader(repo, point, 0, cache_chunks=2)
        for _ in range(3):  # random reads, as file restores and mounts do
            offset = self.rng.randrange(0, len(data) + 1)
            length = self.rng.randrange(0, 3 * self.chunk)
            assert reader.pread(offset, length) == data[offset: offset + length]

    @invariant()
    def check_finds_nothing(self) -> None:
        if not hasattr(self, "repo"):
            return
        with closing(Repository.open(self.repo.backend.location, password=self.password)) as repo:
            report = check_repository(repo, read_data=True)
        assert report.ok, report.to_json()


def test_a_repository_life_keeps_every_point_restorable(fast_kdf: int) -> None:
    examples = int(os.environ.get("VMKEEP_LIFE_EXAMPLES", "12"))
    run_state_machine_as_test(
        RepositoryLife,
        settings=settings(max_examples=examples, stateful_step_count=40),
    )
