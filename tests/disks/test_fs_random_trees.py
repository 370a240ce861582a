"""Random trees through each guest file system vmkeep reads: a tree Hypothesis draws — nested
directories, names in each file system's alphabet (spaces, dots, non-ASCII where it allows
them), files of sizes around block, inline-data and extent boundaries, zero-filled, text and
random content, files with holes on the Linux file systems — is written by the file system's own
tools (``mke2fs -d``, ``mkfs.xfs -p``, ``mkfs.btrfs --rootdir``, ntfs-3g — also with every file
LZNT1-compressed —, mtools, exfat-fuse), sometimes with a directory of 300 files, then read back
through :func:`vmkeep.disks.fs.open_filesystem`: the same directories, the same files, each with
the same bytes (whole and from a random offset) and size, restored the same by the file
restore's writer, and read the same from a restore point of the image — also through ``vmkeep
mount``'s FUSE operations (names, kinds, sizes, 128 KiB reads, one inode per file). 40 examples
per file system (derandomized, as the whole suite); ``VMKEEP_TREE_EXAMPLES=500`` for a longer
hunt (250 each found nothing on 2026-12-06, 150 with the FUSE step nothing on 2026-12-07). The
fixed trees of ``test_disks_filesystems.py`` test features by name; this finds what no one
thought to name."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.disks import disk_builders as b
from tests.hypothesis_profile import SUPPRESSED
from vmkeep.browse.point import PointImage
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.fusefs import DiskTree, TreeOps
from vmkeep.disks.safe_restore import restore
from vmkeep.storage.repository import Repository
from vmkeep.tasks.image import back_up_image_disk, commit_restore_point

MiB = 1 << 20
#: sizes around boundaries: ext4 inline data (60), 512-byte sectors, 4 KiB blocks, FAT clusters,
#: an extent's or a B-tree leaf's worth, more than one MiB
SIZES = [0, 1, 59, 60, 61, 511, 512, 513, 4095, 4096, 4097, 8191, 12288, 65535, 65536,
         65537, 131073, MiB + 3]
#: characters each file system's tools write as they are (FAT via mtools: ASCII, no case
#: duplicates; NTFS: Windows' forbidden characters left out)
ALPHABETS = {
    "ext4": "abcXYZ019 -_.,;=+'~!@#$%^&()[]{}\\:\"<>?|*éßü日本",
    # proto files: no spaces; mkfs.xfs drops a lone ":" and "$" ends a directory
    "xfs": "abcXYZ019-_.,;=+'~!@#%^&()[]{}\\\"<>?|*éßü日本",
    "btrfs": "abcXYZ019 -_.,;=+'~!@#$%^&()[]{}\\:\"<>?|*éßü日本",
    "ntfs": "abcXYZ019 -_.,;=+'~!@#$%^&()[]{}éßü日本",
    # every file NTFS-compressed (LZNT1), as in a folder marked "compress contents"
    "ntfs-compressed": "abcXYZ019 -_.,;=+'~!@#$%^&()[]{}éßü日本",
    "exfat": "abcXYZ019 -_.,;=+'~!@#$%^&()[]{}éßü日本",
    "fat": "abcxyz019_",  # no "-" (mcopy reads a source "-" from stdin), no "~" (mangled)
}
CASELESS = {"ntfs", "ntfs-compressed", "fat", "exfat"}


@dataclass(frozen=True)
class File:
    path: str
    size: int
    kind: str  # "random" | "text" | "zeros"
    hole: int  # bytes of hole before the data (Linux file systems), else 0
    seed: int

    def content(self) -> bytes:
        rng = random.Random(self.seed)
        if self.kind == "zeros":
            data = bytes(self.size)
        elif self.kind == "text":
            line = f"line {self.seed} of a file a guest wrote\n".encode()
            data = (line * (self.size // len(line) + 1))[: self.size]
        else:
            data = rng.randbytes(self.size)
        return bytes(self.hole) + data


def _names(fstype: str) -> st.SearchStrategy[str]:
    name = st.text(ALPHABETS[fstype], min_size=1, max_size=24)
    name = name.map(lambda s: s.strip(" .") or "n")  # Windows drops trailing dots and spaces
    return name.filter(lambda s: s not in (".", "..") and not s.startswith(" "))


@st.composite
def trees(draw: st.DrawFn, fstype: str) -> list[File]:
    """Files (with their directories implied) under unique paths, case-insensitively unique
    where the file system ignores case; no path both a file and a directory."""

    def key(path: str) -> str:
        return path.lower() if fstype in CASELESS else path

    def parents(path: str) -> set[str]:
        parts = path.split("/")
        return {key("/".join(parts[:k])) for k in range(1, len(parts))}

    dirs = draw(st.lists(st.lists(_names(fstype), min_size=1, max_size=3), max_size=4))
    files: list[File] = []
    file_keys: set[str] = set()
    dir_keys: set[str] = set()

    def fits(path: str) -> bool:
        return key(path) not in file_keys | dir_keys and not parents(path) & file_keys

    for i in range(draw(st.integers(1, 12))):
        where = draw(st.sampled_from(["", *("/".join(d) for d in dirs)]))
        path = f"{where}/{draw(_names(fstype))}".lstrip("/")
        if not fits(path):
            continue
        file_keys.add(key(path))
        dir_keys.update(parents(path))
        size = draw(st.sampled_from(SIZES) | st.integers(0, 300_000))
        hole = draw(st.sampled_from([0, 0, 4096, 65536, MiB])) if fstype in (
            "ext4", "xfs", "btrfs") and size else 0
        files.append(File(path, size, draw(st.sampled_from(["random", "text", "zeros"])), hole,
                          seed=i))
    # sometimes a large directory: ext htree, XFS leaf/node, Btrfs leaves, NTFS index buffers,
    # FAT and exFAT directories over several clusters
    bulk = draw(st.sampled_from([0, 300]))
    if bulk:
        where = draw(st.sampled_from(["/".join(d) for d in dirs] or ["many"]))
        stem = draw(_names(fstype))
        paths = [f"{where}/{stem}{n}" for n in range(bulk)]
        if all(fits(p) for p in paths):
            files.extend(File(p, n % 97, "text", 0, seed=1000 + n) for n, p in enumerate(paths))
    return files


def _write_tree(root: Path, files: list[File]) -> None:
    root.mkdir()
    for f in files:
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            if f.hole:
                out.truncate(f.hole)  # a hole, then the data
                out.seek(f.hole)
            out.write(f.content()[f.hole:])


def _image(fstype: str, src: Path, work: Path) -> Path:
    img = work / f"{fstype}.img"
    if fstype == "ext4":
        b.mkfs_ext4(src, img, size_mb=48)
    elif fstype == "xfs":
        b.mkfs_xfs(src, img)
    elif fstype == "btrfs":
        b.mkfs_btrfs(src, img)
    elif fstype in ("ntfs", "ntfs-compressed"):
        b.mkfs_ntfs(src, img, work / "mnt", size_mb=48, compressed=fstype == "ntfs-compressed")
    elif fstype == "exfat":
        b.mkfs_exfat(src, img, work / "mnt", size_mb=48)
    else:
        b.mkfs_fat32(src, img)
    return img


TOOLS = {"ext4": ["mke2fs"], "xfs": ["mkfs.xfs"], "btrfs": ["mkfs.btrfs"],
         "ntfs": ["mkntfs", "ntfs-3g", "fusermount3"],
         "ntfs-compressed": ["mkntfs", "ntfs-3g", "fusermount3"], "fat": ["mkfs.vfat", "mcopy"],
         "exfat": ["mkfs.exfat", "mount.exfat-fuse", "losetup", "fusermount3"]}
#: what each file system's tools add besides the tree
ADDED = {"ext4": {"lost+found"}}


def _through_a_restore_point(img: Path, repo: Path, want: dict[str, bytes],
                             want_dirs: set[str], added: set[str]) -> None:
    """The image backed up (256 KiB chunks: files cross chunk edges; the backup task itself,
    no licence run) and its files read from the restore point, as ``ls`` and ``restore files``
    read them, and through ``vmkeep mount``'s FUSE operations."""
    repository = Repository.init(str(repo), image_chunk_size=256 * 1024)
    commit_restore_point(repository, "t", [back_up_image_disk(repository, str(img))])
    with PointImage.open(Repository.open(str(repo)), "t@latest") as point:
        fs = point.filesystem("whole")
        for path, data in want.items():
            with fs.open(f"/{path}") as f:
                assert f.read() == data, path
        tree = DiskTree([("disk0", point.reader(point.disk_numbers[0]))])
        _through_fuse(TreeOps(tree), want, want_dirs, added)


def _through_fuse(ops: TreeOps, want: dict[str, bytes], want_dirs: set[str],
                  added: set[str]) -> None:
    """The tree as ``vmkeep mount`` serves it: the same names by readdir, sizes and kinds by
    getattr, the same bytes by the kernel's 128 KiB reads, one inode number per file."""
    root = "/volumes/disk0-whole"
    seen_dirs, seen_files, inodes = set(), {}, {}
    todo = [""]
    while todo:
        rel = todo.pop()
        listed = ops.readdir(f"{root}/{rel}".rstrip("/"), 0)
        for name, attrs, _ in listed[2:]:
            path = f"{rel}/{name}".lstrip("/")
            if path.split("/")[0] in added:
                continue
            st = ops.getattr(f"{root}/{path}")
            assert st["st_ino"] == attrs["st_ino"], path
            inodes.setdefault(st["st_ino"], path)
            assert inodes[st["st_ino"]] == path, (path, inodes[st["st_ino"]])
            if stat.S_ISDIR(st["st_mode"]):
                seen_dirs.add(path)
                todo.append(path)
            else:
                assert stat.S_ISREG(st["st_mode"]), path
                seen_files[path] = st["st_size"]
    assert seen_dirs == want_dirs
    assert seen_files == {path: len(data) for path, data in want.items()}
    for path, data in want.items():
        fh = ops.open(f"{root}/{path}", os.O_RDONLY)
        try:
            got = b"".join(ops.read("", 128 * 1024, at, fh)
                           for at in range(0, len(data), 128 * 1024))
        finally:
            ops.release("", fh)
        assert got == data, path


@pytest.mark.parametrize("fstype", sorted(ALPHABETS))
def test_a_random_tree_reads_back_as_written(fstype: str,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    b._need(TOOLS[fstype])

    @settings(max_examples=int(os.environ.get("VMKEEP_TREE_EXAMPLES", "40")),
              suppress_health_check=list(SUPPRESSED))
    @given(files=trees(fstype), offset_seed=st.integers(0, 2**16))
    def check(files: list[File], offset_seed: int) -> None:
        work = tmp_path_factory.mktemp(f"random-{fstype}")
        try:
            src = work / "src"
            _write_tree(src, files)
            img = _image(fstype, src, work)
            with open(img, "rb") as fh:
                fs = open_filesystem(fh, "v")
                entries = {e.path.lstrip("/"): e for e in fs.iter_entries("/")}
                entries = {p: e for p, e in entries.items()
                           if p.split("/")[0] not in ADDED.get(fstype, set())}
                want_dirs = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_dir()}
                got_dirs = {p for p, e in entries.items() if e.type == "dir"}
                assert got_dirs == want_dirs
                want = {f.path: f.content() for f in files}
                got_files = {p for p, e in entries.items() if e.type == "file"}
                assert got_files == set(want)
                rng = random.Random(offset_seed)
                for path, data in want.items():
                    assert entries[path].size == len(data), path
                    with fs.open(f"/{path}") as f:
                        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(
                            data).digest(), path
                    if data:
                        at = rng.randrange(len(data))
                        with fs.open(f"/{path}") as f:
                            f.seek(at)
                            assert f.read(5000) == data[at:at + 5000], (path, at)
                out = work / "restored"  # and through the file restore's writer
                out.mkdir()
                summary = restore(fs, out)
                assert not summary.skipped, summary.skipped
                restored = {str(p.relative_to(out)): p for p in out.rglob("*")
                            if str(p.relative_to(out)).split("/")[0]
                            not in ADDED.get(fstype, set())}
                assert {p for p, f in restored.items() if f.is_dir()} == want_dirs
                assert {p for p, f in restored.items() if f.is_file()} == set(want)
                for path, data in want.items():
                    assert restored[path].read_bytes() == data, path
            _through_a_restore_point(img, work / "repo", want, want_dirs,
                                     ADDED.get(fstype, set()))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()
