"""What looking for deleted blocks (``--exclude-deleted``) costs: :func:`find_deleted` on a 2 TiB
NTFS volume (a sparse file made by ``mkntfs -Q``; its 64 MiB ``$Bitmap`` is read whole), once as
made — almost all free, a handful of areas — and once with the worst fragmentation the search
still reports: every other MiB in use, so one area per 2 MiB (≈ 1 M areas); then on 2 TiB ext4
volumes (sparse files made by ``mke2fs``, one inode per 64 MiB): as mke2fs makes them by default
(groups never allocated from have no bitmap on disk and are skipped) and without ``uninit_bg``
and ``metadata_csum`` (every group's bitmap written: 16,384 bitmaps read, counted and checked);
then on 2 TiB XFS volumes (``mkfs.xfs``): as made (4 allocation groups), and with one allocation
group per GiB (2,048 AGFs, free lists and free-space trees read and checked; the log's head found
and its records read); then on Btrfs volumes (``mkfs.btrfs``): 2 TiB as made, and 8 GiB holding
``--btrfs-files`` files of 4–12 KiB (``--rootdir``: one extent each, so the extent tree the search
walks and checks against the free-space tree has that many items).
Prints wall and CPU seconds and the process's peak RSS per case, for docs/performance.md.

``--btrfs-extents 1000000,4000000`` (root: Linux mounts the volume on a loop device in a private
mount namespace) adds Btrfs volumes with that many extents — one file, a 4 KiB extent
preallocated (``fallocate``) at every other 4 KiB of it, so the extent tree has one item per
extent without writing their data — and prints, per count, the extent tree's leaves (btrfs-progs'
``dump-tree``), the metadata the search read and its time: where the search's read budget ends.
``--extents-only`` skips every other case.

    uv run python bench/bench_deleted_blocks.py [--workdir bench-work/deleted] [--size-gib 2048] \
        [--btrfs-files 100000] [--btrfs-extents 1000000,4000000 [--extents-only]]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vmkeep.disks.deleted_blocks import SYSTEM_RECORDS, find_deleted

MiB = 1 << 20


def _scan(path: Path, label: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        wall, cpu = time.perf_counter(), time.process_time()
        scan = find_deleted(lambda off, n: os.pread(fd, n, off), size, MiB)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        os.close(fd)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"| {label} | {len(scan.areas)} | {scan.total / 2**30:.1f} GiB | {wall:.2f} s | "
          f"{cpu:.2f} s | {rss} MiB | {'; '.join(scan.notes) or '—'} |")


def _fragment(path: Path) -> None:
    """Mark every other MiB of the volume in use in its ``$Bitmap`` (system files kept)."""
    from dissect.ntfs import NTFS

    with open(path, "r+b") as fh:
        fs = NTFS(fh)
        cluster = fs.cluster_size
        [(lcn, count)] = fs.mft.get(6).dataruns()
        bits_per_mib = MiB // cluster
        pattern = b"\xff" * (bits_per_mib // 8) + bytes(bits_per_mib // 8)
        length = count * cluster
        bitmap = bytearray((pattern * (length // len(pattern) + 1))[:length])
        for number in SYSTEM_RECORDS:
            for first, n in fs.mft.get(number).dataruns():
                for c in range(first or 0, (first or 0) + n if first is not None else 0):
                    bitmap[c >> 3] |= 1 << (c & 7)
        fh.seek(lcn * cluster)
        fh.write(bitmap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="bench-work/deleted")
    parser.add_argument("--size-gib", type=int, default=2048)
    parser.add_argument("--btrfs-files", type=int, default=100_000)
    parser.add_argument("--btrfs-extents", default="",
                        help="comma-separated extent counts (needs root)")
    parser.add_argument("--extents-only", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in args.btrfs_extents.split(",") if n]
    if args.extents_only:
        _btrfs_extents(work, counts)
        return
    image = work / "ntfs.img"
    image.unlink(missing_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(args.size_gib << 30)
    subprocess.run(["mkntfs", "-q", "-F", "-Q", "-c", "4096", str(image)], check=True,
                   capture_output=True)
    print("| volume | areas | free found | wall | CPU | peak RSS | notes |")
    print("|---|---|---|---|---|---|---|")
    _scan(image, f"{args.size_gib} GiB, as made by mkntfs")
    _fragment(image)
    _scan(image, f"{args.size_gib} GiB, every other MiB in use")
    image.unlink()
    for label, options in (("ext4 as made by mke2fs", []),
                           ("ext4, every bitmap written", ["-O", "^metadata_csum,^uninit_bg"])):
        image = work / "ext4.img"
        with open(image, "wb") as fh:
            fh.truncate(args.size_gib << 30)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-i", str(64 * MiB),
                        "-E", "lazy_itable_init=1,nodiscard", *options, str(image)],
                       check=True, capture_output=True)
        _scan(image, f"{args.size_gib} GiB, {label}")
        image.unlink()
    ags = max(4, args.size_gib)  # 1 GiB allocation groups: the per-AG reads of the search
    for label, options in (("XFS as made by mkfs.xfs", []),
                           (f"XFS of {ags} AGs", ["-d", f"agcount={ags}"])):
        image = work / "xfs.img"
        with open(image, "wb") as fh:
            fh.truncate(args.size_gib << 30)
        subprocess.run(["mkfs.xfs", "-q", "-f", "-K", *options, str(image)], check=True,
                       capture_output=True)
        _scan(image, f"{args.size_gib} GiB, {label}")
        image.unlink()
    _btrfs(work, args.size_gib, args.btrfs_files)
    _btrfs_extents(work, counts)


def _btrfs(work: Path, size_gib: int, files: int) -> None:
    image = work / "btrfs.img"
    for label, size, tree in ((f"{size_gib} GiB Btrfs as made by mkfs.btrfs", size_gib, None),
                              (f"8 GiB Btrfs of {files:,} files", 8, _many_files(work, files))):
        with open(image, "wb") as fh:
            fh.truncate(size << 30)
        rootdir = ["--rootdir", str(tree)] if tree is not None else []
        subprocess.run(["mkfs.btrfs", "-q", "-f", *rootdir, str(image)], check=True,
                       capture_output=True)
        _scan(image, label)
        image.unlink()
    shutil.rmtree(work / "btrfs-tree")


def _btrfs_extents(work: Path, counts: list[int]) -> None:
    """One volume grown to each of ``counts`` extents in turn (module docstring)."""
    if not counts:
        return
    image, mnt = work / "btrfs-extents.img", work / "mnt"
    mnt.mkdir(exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(max(8, 2 * max(counts) * 4096 >> 30) << 30)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True, capture_output=True)
    print("\n| extents | extent-tree leaves | metadata read | wall | CPU | notes |")
    print("|---|---|---|---|---|---|")
    done = 0
    for count in counts:
        fill = (f"import os\nfd = os.open({str(mnt / 'f')!r}, os.O_RDWR | os.O_CREAT)\n"
                f"for i in range({done}, {count}):\n    os.posix_fallocate(fd, i * 8192, 4096)\n")
        subprocess.run(["unshare", "--mount", "sh", "-c",
                        'mount -o loop "$0" "$1" && "$2" -c "$3"; s=$?; umount "$1"; exit $s',
                        str(image), str(mnt), sys.executable, fill], check=True)
        done = count
        dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "extent",
                               str(image)], check=True, capture_output=True, text=True).stdout
        leaves = sum(1 for line in dump.splitlines() if line.startswith("leaf "))
        fd = os.open(image, os.O_RDONLY)
        read = 0

        def pread(offset: int, n: int, fd: int = fd) -> bytes:
            nonlocal read
            read += n
            return os.pread(fd, n, offset)

        try:
            wall, cpu = time.perf_counter(), time.process_time()
            scan = find_deleted(pread, os.fstat(fd).st_size, MiB)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            os.close(fd)
        print(f"| {count:,} | {leaves:,} | {read / MiB:.0f} MiB | {wall:.2f} s | {cpu:.2f} s | "
              f"{'; '.join(scan.notes) or '—'} |", flush=True)
    image.unlink()


def _many_files(work: Path, files: int) -> Path:
    """``files`` files of 4, 8 or 12 KiB of random bytes, 1,000 per directory."""
    tree = work / "btrfs-tree"
    shutil.rmtree(tree, ignore_errors=True)
    for i in range(files):
        directory = tree / f"d{i // 1000}"
        if i % 1000 == 0:
            directory.mkdir(parents=True)
        (directory / f"f{i}").write_bytes(os.urandom(4096 * (1 + i % 3)))
    return tree


if __name__ == "__main__":
    main()
