"""Helpers for the file-backup tests: build a changing tree, snapshot it, compare restores."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from vmkeep.storage.repository import Repository

Snapshot = dict[str, tuple[Any, ...]]


def licence_env(monkeypatch: Any) -> None:
    """The development licence, its key trusted in this process (see tests/support/licence.py)."""
    import vmkeep.licensing.store as store

    keys = Path(__file__).resolve().parents[1] / "licensing" / "keys"
    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (keys / "dev_public.pem").read_bytes())
    monkeypatch.setenv("VMKEEP_LICENSE", str(keys / "dev_licence.json"))


def new_repo(path: Path) -> Repository:
    return Repository.init(str(path))


def write(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def build_tree(root: Path, *, xattrs: bool = True, links: bool = True) -> None:
    """Version 1 of a tree with every kind of entry the tests check."""
    write(root / "README", b"hello\n", 0o644, 1_600_000_000_123_456_789)
    write(root / "docs" / "a.txt", b"a" * 1000, 0o600, 1_600_000_001_000_000_000)
    write(root / "docs" / "big.bin", os.urandom(3 << 20), 0o640)
    write(root / "bin" / "tool", b"#!/bin/sh\necho hi\n", 0o755)
    write(root / "docs" / "keep.txt", b"untouched\n", 0o444)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "docs").chmod(0o750)
    if links:
        os.symlink("../README", root / "docs" / "readme-link")
        os.symlink("/nonexistent/abs", root / "dangling")
        os.link(root / "docs" / "a.txt", root / "bin" / "a-hardlink")
    if xattrs:
        os.setxattr(root / "README", "user.origin", b"test")


def change_tree(root: Path) -> None:
    """Version 2: content, mode and mtime changes, deletions, additions, links."""
    write(root / "README", b"hello again\n", 0o644, 1_700_000_000_000_000_000)
    (root / "bin" / "tool").chmod(0o700)
    os.utime(root / "docs" / "a.txt", ns=(1_650_000_000_000_000_000,) * 2)
    big = bytearray((root / "docs" / "big.bin").read_bytes())
    big[1_000_000:1_000_010] = b"0123456789"
    write(root / "docs" / "big.bin", bytes(big), 0o640)
    (root / "dangling").unlink()
    write(root / "new" / "file.txt", b"new file\n")
    (root / "new" / "emptydir").mkdir()
    os.symlink("file.txt", root / "new" / "rel-link")
    os.link(root / "README", root / "new" / "readme-hardlink")
    with contextlib.suppress(OSError):
        os.setxattr(root / "docs" / "a.txt", "user.tag", b"v2")


def snapshot(root: Path, *, xattrs: bool = True, mtime_res_ns: int = 1) -> Snapshot:
    """Everything a restore must reproduce, by relative path (root itself excluded)."""
    out: Snapshot = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            mtime = st.st_mtime_ns // mtime_res_ns
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
                continue
            xa: tuple[Any, ...] = ()
            if xattrs:
                xa = tuple(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p)))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime, xa)
            else:
                group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, digest, group, xa)
    return out


def hardlink_groups(snap: Snapshot) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for rel, v in snap.items():
        if v[0] == "file" and v[4] is not None:
            groups.setdefault(v[4], set()).add(rel)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def comparable(snap: Snapshot, *, modes: bool = True) -> dict[str, tuple[Any, ...]]:
    """The snapshot without hard-link group names (compared separately) and optional modes."""
    out = {}
    for rel, v in snap.items():
        if v[0] == "file":
            out[rel] = ("file", v[1] if modes else None, v[2], v[3], v[5])
        elif v[0] == "dir":
            out[rel] = ("dir", v[1] if modes else None, v[2], v[3])
        else:
            out[rel] = v
    return out
