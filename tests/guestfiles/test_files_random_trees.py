"""Random trees through a file backup and back: Hypothesis draws a tree — names with spaces,
backslashes, non-ASCII and bytes that are not UTF-8, files of sizes around chunk and block
boundaries with holes, modes, nanosecond mtimes, extended attributes, symlinks, hard links,
empty directories — backs it up (``backup files``), changes it at random (files rewritten,
grown, cut, removed, added) and backs it up again; each restore point restores to exactly the
tree it was taken of (content, modes, mtimes, xattrs, links, hard-link groups), and ``vmkeep
mount``'s FUSE operations serve it the same (read-only modes, hard links sharing an inode). 40
examples (derandomized, as the whole suite); ``VMKEEP_TREE_EXAMPLES`` for a longer hunt."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.guestfiles.files_helpers import comparable, hardlink_groups, new_repo, snapshot
from tests.hypothesis_profile import SUPPRESSED
from vmkeep.flows.backup_files import backup_files as backup_flow
from vmkeep.flows.restore_file_point import restore_file_point
from vmkeep.flows.run import run_flow

pytestmark = pytest.mark.usefixtures("licensed")
MiB = 1 << 20
SIZES = [0, 1, 4095, 4096, 4097, 65535, 65536, 65537, MiB - 1, MiB, MiB + 1, 3 * MiB + 5]
NAME_CHARS = "abcXYZ019 -_.,;=+'~!@#$%^&()[]{}\\:\"<>?|*éßü日本\t"
#: names a Linux guest may have that are not UTF-8 (Latin-1 leftovers, broken sequences)
RAW_NAMES = [b"caf\xe9", b"\xff\xfe", b"a\x80b", b"\xc3(", b"latin1-\xe4\xf6\xfc"]


def _names() -> st.SearchStrategy[str]:
    text = st.text(NAME_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
    raw = st.sampled_from(RAW_NAMES).map(os.fsdecode)
    return text | raw


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """``(relative path, kind, detail)`` in creation order: ``dir``; ``file`` (size, seed, hole,
    mode, mtime_ns, xattr or None); ``symlink`` (target text); ``hardlink`` (the file it links)."""
    out: list[tuple[str, str, Any]] = []
    dirs = [""]
    files: list[str] = []
    used: set[str] = set()
    for i in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(_names())}".lstrip("/")
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink"]))
        if kind == "dir":
            dirs.append(path)
            out.append((path, "dir", None))
        elif kind == "symlink":
            out.append((path, "symlink", draw(st.sampled_from(
                ["target", "../up", "/etc/passwd", "a b\\c", "dangling/x"]))))
        elif kind == "hardlink" and files:
            out.append((path, "hardlink", draw(st.sampled_from(files))))
        else:
            size = draw(st.sampled_from(SIZES) | st.integers(0, 200_000))
            hole = draw(st.sampled_from([0, 0, 65536, 2 * MiB])) if size else 0
            mode = draw(st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o664]))
            mtime = draw(st.integers(10**18, 2 * 10**18))
            xattr = draw(st.none() | st.binary(max_size=64))
            files.append(path)
            out.append((path, "file", (size, i, hole, mode, mtime, xattr)))
    return out


def _make(root: Path, tree: list[tuple[str, str, Any]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for path, kind, detail in tree:
        p = root / path
        if kind == "dir":
            p.mkdir(exist_ok=True)
        elif kind == "symlink":
            p.symlink_to(detail)
        elif kind == "hardlink":
            os.link(root / detail, p)
        else:
            _write(p, detail)


def _write(p: Path, detail: tuple[int, int, int, int, int, bytes | None]) -> None:
    size, seed, hole, mode, mtime, xattr = detail
    with open(p, "wb") as f:
        if hole:
            f.truncate(hole)
            f.seek(hole)
        f.write(random.Random(seed).randbytes(size))
    if xattr is not None:
        os.setxattr(p, "user.test", xattr)
    os.chmod(p, mode)
    os.utime(p, ns=(mtime, mtime))


def _change(root: Path, tree: list[tuple[str, str, Any]], seed: int) -> None:
    """Rewrite, grow, cut or remove some files and add one, as a day's use would."""
    rng = random.Random(seed)
    for path, kind, detail in tree:
        p = root / path
        if kind != "file" or not p.exists() or rng.random() < 0.5:
            continue
        what = rng.choice(["rewrite", "grow", "cut", "remove"])
        if what == "remove":
            p.unlink()
            continue
        os.chmod(p, 0o644)
        data = p.read_bytes()
        if what == "rewrite" and data:
            at = rng.randrange(len(data))
            data = data[:at] + bytes(rng.randrange(256) for _ in range(10)) + data[at + 10:]
        elif what == "grow":
            data += rng.randbytes(rng.choice([1, 4096, MiB]))
        else:
            data = data[: len(data) // 2]
        p.write_bytes(data)
        t = detail[4] + 10**9
        os.utime(p, ns=(t, t))
    _write(root / "added later", (5000, seed, 0, 0o644, 1_700_000_000 * 10**9, None))


def _restored(repo: str, point: str, dest: Path) -> dict[str, Any]:
    dest.mkdir()
    out: dict[str, Any] = run_flow(restore_file_point, False, repo=repo, point=point,
                                   target=str(dest))
    assert out["ok"], out
    return snapshot(dest)


def _mounted(repo: str, point: str) -> dict[str, Any]:
    """The point as ``vmkeep mount`` serves it (its FUSE operations, in-process), in
    :func:`snapshot`'s terms: modes read-only, hard links by their shared ``st_ino``."""
    from vmkeep.disks.fusefs import RootTree, TreeOps
    from vmkeep.guestfiles.tree import PointTree
    from vmkeep.storage.file_manifest import FilePoint, load_any_point
    from vmkeep.storage.repository import Repository

    repository = Repository.open(repo)
    loaded = load_any_point(repository, point)
    assert isinstance(loaded, FilePoint)
    ops = TreeOps(RootTree(PointTree(repository, loaded)))
    out: dict[str, Any] = {}
    inodes: dict[int, str] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        for name, attrs, _ in ops.readdir(f"/{rel}", 0)[2:]:
            path = f"{rel}/{name}".lstrip("/")
            st = ops.getattr(f"/{path}")
            assert st["st_ino"] == attrs["st_ino"], path
            if stat.S_ISLNK(st["st_mode"]):
                out[path] = ("symlink", ops.readlink(f"/{path}"))
                continue
            xa = tuple(sorted((n, ops.getxattr(f"/{path}", n))
                              for n in ops.listxattr(f"/{path}")))
            if stat.S_ISDIR(st["st_mode"]):
                todo.append(path)
                out[path] = ("dir", stat.S_IMODE(st["st_mode"]), st["st_mtime"], xa)
                continue
            assert stat.S_ISREG(st["st_mode"]), path
            group = inodes.setdefault(st["st_ino"], path) if st["st_nlink"] > 1 else None
            fh = ops.open(f"/{path}", os.O_RDONLY)
            try:
                data = b"".join(ops.read("", 128 * 1024, at, fh)
                                for at in range(0, st["st_size"], 128 * 1024))
            finally:
                ops.release("", fh)
            assert len(data) == st["st_size"], path
            out[path] = ("file", stat.S_IMODE(st["st_mode"]), st["st_mtime"],
                         hashlib.sha256(data).hexdigest(), group, xa)
    return out


def _read_only(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` as a read-only mount shows it: no write bits (symlinks keep theirs)."""
    return {rel: (v[0], v[1] & ~0o222, *v[2:]) if v[0] != "symlink" else v
            for rel, v in snap.items()}


def test_a_random_tree_and_its_change_restore_exactly(tmp_path_factory: pytest.TempPathFactory
                                                      ) -> None:
    @settings(max_examples=int(os.environ.get("VMKEEP_TREE_EXAMPLES", "40")),
              suppress_health_check=list(SUPPRESSED))
    @given(tree=trees(), change_seed=st.integers(0, 2**16))
    def check(tree: list[tuple[str, str, Any]], change_seed: int) -> None:
        work = tmp_path_factory.mktemp("files-random")
        try:
            src, repo = work / "src", str(work / "repo")
            new_repo(Path(repo))
            _make(src, tree)
            before = snapshot(src)
            first = run_flow(backup_flow, False, repo=repo, source=str(src), name="t")
            assert not first["partial"], first["warnings"]
            _change(src, tree, change_seed)
            after = snapshot(src)
            second = run_flow(backup_flow, False, repo=repo, source=str(src), name="t")
            assert not second["partial"] and second["parent"] == first["id"], second
            for point, want, name in ((first["id"], before, "r1"), (second["id"], after, "r2")):
                got = _restored(repo, point, work / name)
                assert comparable(got) == comparable(want)
                assert hardlink_groups(got) == hardlink_groups(want)
                mounted = _mounted(repo, point)
                assert comparable(mounted) == comparable(_read_only(want))
                assert hardlink_groups(mounted) == hardlink_groups(want)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()
