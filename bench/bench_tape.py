"""Benchmark the tape copy job against a raw writer on the same VTL drive, in one run.

    uv run --frozen python bench/bench_tape.py [--mib 256] [--block-kib 1024] [--rounds 7]
                                               [--tape-dir DIR] [--no-precondition]
                                               [--depth N] [--outstanding N]

Starts a tgt library (2 drives, 8 slots of 2 GB, thin) in a temp dir, backs up an image of
``--mib`` MiB of random data (incompressible: packs are as large as the image) into a
repository in a temp dir, then alternates, ``--rounds`` times: (a) the **raw writer** —
``write_block`` of the same number of bytes in ``--block-kib`` blocks from one buffer on drive 0,
no repository reads (the buffer stays in the CPU cache); (a') the same from ``--mib`` MiB of
distinct bytes in memory (``raw_ram``: what any producer's data costs to send, and the ceiling
a copy can reach); (a'') the **raw pipe** (``pipe_rate``): the point's pack files read cold
from the repository's disk with ``O_DIRECT`` by a reader thread and written as they are, no
framing or digest (``dd iflag=direct`` through ``mbuffer``), and the disk's read rate of the
same files alone (``disk_read_mb_s``: no drive) — the simplest copy of the same bytes from
the same disk, which the copy job has to beat; (b) the **copy job** — ``copy_points`` of the
point to a fresh cartridge on drive 0 (reading packs from disk, pax framing, a digest per
object for its pax record, ring buffer) — twice:
**cold**, after dropping every repository file's pages from the page cache
(``posix_fadvise(DONTNEED)``), which is what a user's nightly copy sees (packs are written with
``O_DIRECT`` and were never in the cache), and **warm**, after reading every repository file
into the page cache (what a copy right after the same copy sees; the cold and warm rounds
alternate their order from round to round).  Cold is the number that counts.  Two copy rates:
the whole job (planning, load, label, unload included) and the streaming phase (first block to
filemark, what keeps the drive from shoe-shining).  Prints, for cold and warm, the best of
each and the ratios to the raw writer's best as JSON, and the median over rounds of (copy
streaming / raw) taken pairwise (each pair ran back to back, so it is less sensitive to other
users' load).

Where the cartridges live: by default the library's folder (tgtd's cartridge files) is beside
the repository, on the **same disk**, so the drive's writes and the copy's reads share one
device — which a real site does not have (a tape drive's medium is not the repository's disk).
``--tape-dir DIR`` puts the library's folder (cartridge files included) under ``DIR`` instead,
e.g. ``/dev/shm`` (a tmpfs: a drive whose medium costs no disk I/O at all).  The JSON names
the configuration: ``tape_dir``, its file system type and whether it shares the repository's
device (``tape_same_device``).
**Preconditioning**: tgt's cartridges are sparse files, and the first write to a region of one
costs the file system's allocation (ext4 blocks, or tmpfs pages — fresh memory, which on this VM
the hypervisor has to fault in), 1.5–4× slower than writing it again; a real tape has no such
first-write cost.  So before the rounds, every cartridge the bench writes (the raw writers' two
and the copy's, which takes the same scratch cartridge every round) is written once in full,
uncounted, by the raw writer; ``--no-precondition`` skips it (then the first round of each side
pays the VTL's allocation: measured 190–370 MB/s against 550–850 afterwards).
Tape bytes per second, MB = 10^6 bytes.  Also the CPU seconds per GB each side spent (this
process, all threads; and tgtd), medians over rounds: a cost that other users' load does not
change, where the MB/s on a shared 2-core machine do.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from vmkeep.lab import vtl as vtl_mod
from vmkeep.scsi.ssc import TapeDrive
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library, LibraryConfig, Pool, save_pool
from vmkeep.tape.stream import DEFAULT_DEPTH, DEFAULT_OUTSTANDING, BlockWriter, Streaming


def _cpu(pid: int) -> tuple[float, float]:
    """(this process's CPU seconds, all threads; tgtd's) — load-independent cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tgtd = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return time.process_time(), tgtd


@contextmanager
def _loaded(lib: Library, barcode: str) -> Iterator[TapeDrive]:
    """Drive 0 (locked) with ``barcode`` loaded, in variable-block mode, at the beginning of
    the tape; unloaded and closed afterwards."""
    with lib.drive_lock(0):
        d: TapeDrive = lib.open_drive(0)
        try:
            lib.load(barcode, 0)
            d.wait_ready()
            d.set_variable_blocks()
            d.rewind()
            yield d
            lib.unload(0)
        finally:
            d.close()


def raw_rate(
    lib: Library, barcode: str, nbytes: int, block: int, data: bytes | None = None,
    outstanding: int = DEFAULT_OUTSTANDING,
) -> float:
    """``write_block`` of ``nbytes`` in ``block``-byte blocks: of one buffer written again and
    again (hot in the CPU cache), or, with ``data``, of successive blocks of ``data`` (as a
    producer's bytes would come from memory)."""
    buf = memoryview(data if data is not None else os.urandom(block))
    span = len(buf) - len(buf) % block
    with _loaded(lib, barcode) as d:
        t0 = time.perf_counter()
        off = 0
        if outstanding == 1:
            for _ in range(nbytes // block):
                d.write_block(buf[off : off + block])
                off = (off + block) % span
        else:  # the copy's way of queueing WRITEs, inline (no ring, no thread)
            bw = BlockWriter(d, block, depth=0, outstanding=outstanding)
            for _ in range(nbytes // block):
                bw.write(buf[off : off + block])
                off = (off + block) % span
            bw.close(filemark=False)
        d.write_filemarks(1)
        dt = time.perf_counter() - t0
    return (nbytes // block) * block / dt / 1e6


#: The raw pipe's reads: the copy's own read size (``vmkeep.tape.prefetch.CHUNK``), and how
#: many such buffers its reader may fill ahead of the drive (16 MiB).
PIPE_READ = 2 << 20
PIPE_BUFFERS = 8


def pipe_rate(
    lib: Library, barcode: str, paths: list[str], block: int,
    outstanding: int = DEFAULT_OUTSTANDING,
) -> tuple[float, float]:
    """The **raw pipe**: the files ``paths`` (a point's packs, cold) read with ``O_DIRECT`` by
    a reader thread into :data:`PIPE_BUFFERS` buffers of :data:`PIPE_READ` and written as they
    are, in ``block``-byte blocks, each file's last block zero-padded (``dd conv=sync``), to
    drive 0 — no pax framing, no digest, no catalog: what ``dd iflag=direct`` through
    ``mbuffer`` from the repository's disk to the drive reaches.  Returns (streaming MB/s,
    first block to filemark as the copy's streaming phase is timed; the disk's read MB/s
    alone, reading the same files again, cold, with no drive)."""
    total = sum(os.path.getsize(p) for p in paths)
    for p in paths:
        _drop(p)
    free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
    for _ in range(PIPE_BUFFERS):
        free.put(mmap.mmap(-1, PIPE_READ))
    filled: queue.Queue[tuple[mmap.mmap, int] | int | None] = queue.Queue()

    def read() -> None:
        try:
            for p in paths:
                fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
                try:
                    off = 0
                    while True:
                        buf = free.get()
                        n = os.preadv(fd, [buf], off)
                        if n <= 0:
                            free.put(buf)
                            break
                        filled.put((buf, n))
                        off += n
                    filled.put(-off % block)  # the file's padding
                finally:
                    os.close(fd)
        finally:
            filled.put(None)

    with _loaded(lib, barcode) as d:
        reader = threading.Thread(target=read, name="pipe-read")
        reader.start()
        bw = BlockWriter(d, block, depth=0, outstanding=outstanding)
        while (item := filled.get()) is not None:
            if isinstance(item, int):
                bw.write(bytes(item))
                continue
            buf, n = item
            bw.write(memoryview(buf)[:n].toreadonly())
            bw.fence(lambda buf=buf: free.put(buf))  # type: ignore[misc]
        reader.join()
        bw.close(filemark=False)
        d.write_filemarks(1)
        end = time.perf_counter()
    assert bw.started is not None and bw.written >= total
    for p in paths:
        _drop(p)
    buf = mmap.mmap(-1, PIPE_READ)
    t0 = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
        try:
            off = 0
            while (n := os.preadv(fd, [buf], off)) > 0:
                off += n
        finally:
            os.close(fd)
    read_rate = total / (time.perf_counter() - t0) / 1e6
    return bw.written / (end - bw.started) / 1e6, read_rate


def _drop(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _repo_files(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, _dirs, names in os.walk(root) for n in names]


def drop_cache(root: Path) -> None:
    """Drop the page-cache pages of every file under ``root`` (clean pages: the repository
    is fsynced), so the next copy reads the repository from the disk."""
    for path in _repo_files(root):
        _drop(path)


def warm_cache(root: Path) -> None:
    """Read every file under ``root`` into the page cache."""
    for path in _repo_files(root):
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def copy_round(
    repo: Repository, lib: Library, point: str, block: int, pid: int, cold: bool,
    depth: int | None = None, outstanding: int = DEFAULT_OUTSTANDING,
) -> tuple[float, float, float, float]:
    """(whole-job MB/s, streaming MB/s, CPU seconds of this process, of tgtd) of one copy."""
    (drop_cache if cold else warm_cache)(Path(repo.raw_backend.location))
    c0 = _cpu(pid)
    streaming = Streaming(DEFAULT_DEPTH if depth is None else depth, outstanding)
    rep = copy_points(repo, lib, [point], "bench", drive_index=0, block_size=block,
                      streaming=streaming)
    c1 = _cpu(pid)
    lib.update_media(rep.cartridges[0], pool=None, files=0)  # scratch it again
    return rep.mb_per_s, rep.bytes / 1e6 / rep.stream_seconds, c1[0] - c0[0], c1[1] - c0[1]


def fs_type(path: Path) -> str:
    """The type of the file system holding ``path`` (longest mount point of /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mnt, typ = line.split()[:3]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, kind = mnt, typ
    return kind


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--block-kib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)  # round-to-round spread here is ±15 %
    ap.add_argument("--tape-dir", type=Path, default=None,
                    help="put the library's cartridge files under this folder (e.g. /dev/shm) "
                         "instead of beside the repository on the same disk")
    ap.add_argument("--no-precondition", action="store_true",
                    help="do not write every cartridge once before the rounds (see above)")
    ap.add_argument("--outstanding", type=int, default=DEFAULT_OUTSTANDING,
                    help="WRITE commands queued at the drive at once, by the raw writer and "
                         "the copy alike (1: one at a time)")
    ap.add_argument("--depth", type=int, default=None,
                    help="the copy's ring depth in blocks (0: written inline by the job's "
                         "thread; default: copy_points' own)")
    a = ap.parse_args()
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vmkeep-bench-tape-")))
        tape_root = root if a.tape_dir is None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="vmkeep-bench-vtl-", dir=a.tape_dir)))
        os.environ["VMKEEP_TAPE_DIR"] = str(root / "tapecfg")
        os.environ["VMKEEP_STATE_DIR"] = str(root / "state")
        v = vtl_mod.start(tape_root / "vtl", size_mb=2000)
        try:
            cfg = LibraryConfig("bench", f"{v.url}/{v.changer_lun}", [f"{v.url}/1", f"{v.url}/2"])
            cfg.save()
            save_pool(Pool("bench", 0, append=False))
            lib = Library(cfg)
            img = root / "img"
            with open(img, "wb") as f:
                for _ in range(a.mib):
                    f.write(os.urandom(1 << 20))
            repo = Repository.init(str(root / "repo"))
            with open(img, "rb") as f:
                res = backup_disk(repo, f, img.stat().st_size)
            point = commit_point(repo, "bench", [res])
            img.unlink()
            block = a.block_kib << 10
            if not a.no_precondition:  # the copy always takes the lowest scratch cartridge
                for barcode in (v.barcodes[0], v.barcodes[-2], v.barcodes[-1]):
                    raw_rate(lib, barcode, a.mib << 20, block)
            load0 = Path("/proc/loadavg").read_text().split()[:3]
            raw, raw_ram, pipe, disk_read = [], [], [], []
            packs = sorted(p for p in _repo_files(root / "repo" / "packs"))
            job: dict[str, list[float]] = {"cold": [], "warm": []}
            stream: dict[str, list[float]] = {"cold": [], "warm": []}
            ram = os.urandom(a.mib << 20)
            cpu: dict[str, list[float]] = {k: [] for k in (
                "raw", "raw_tgtd", "raw_ram", "raw_ram_tgtd", "copy_cold", "copy_cold_tgtd",
                "copy_warm", "copy_warm_tgtd")}
            gb = (a.mib << 20) / 1e9
            for r in range(a.rounds):
                c0 = _cpu(v.pid)
                raw.append(raw_rate(lib, v.barcodes[-1], a.mib << 20, block,
                                    outstanding=a.outstanding))
                c1 = _cpu(v.pid)
                raw_ram.append(raw_rate(lib, v.barcodes[-2], a.mib << 20, block, ram,
                                        a.outstanding))
                c1r = _cpu(v.pid)
                cpu["raw"].append((c1[0] - c0[0]) / gb)
                cpu["raw_tgtd"].append((c1[1] - c0[1]) / gb)
                cpu["raw_ram"].append((c1r[0] - c1[0]) / gb)
                cpu["raw_ram_tgtd"].append((c1r[1] - c1[1]) / gb)
                piped, alone = pipe_rate(lib, v.barcodes[-2], packs, block, a.outstanding)
                pipe.append(piped)
                disk_read.append(alone)
                for kind in ("cold", "warm") if r % 2 == 0 else ("warm", "cold"):
                    whole, streaming, own, tgtd = copy_round(repo, lib, point.id, block, v.pid,
                                                             kind == "cold", a.depth,
                                                             a.outstanding)
                    job[kind].append(whole)
                    stream[kind].append(streaming)
                    cpu[f"copy_{kind}"].append(own / gb)
                    cpu[f"copy_{kind}_tgtd"].append(tgtd / gb)
            out: dict[str, object] = {
                "tape_dir": str(tape_root), "tape_fs": fs_type(tape_root),
                "tape_same_device": os.stat(tape_root).st_dev == os.stat(root / "repo").st_dev,
                "mib": a.mib, "block_kib": a.block_kib,
                "preconditioned": not a.no_precondition, "depth": a.depth,
                "outstanding": a.outstanding,
                "raw_mb_s": [round(x, 1) for x in raw],
                "raw_ram_mb_s": [round(x, 1) for x in raw_ram],
                "pipe_mb_s": [round(x, 1) for x in pipe],
                "disk_read_mb_s": [round(x, 1) for x in disk_read]}
            for kind in ("cold", "warm"):
                st = stream[kind]
                out |= {
                    f"{kind}_copy_mb_s": [round(x, 1) for x in job[kind]],
                    f"{kind}_copy_stream_mb_s": [round(x, 1) for x in st],
                    f"{kind}_ratio_job_best": round(max(job[kind]) / max(raw), 3),
                    f"{kind}_ratio_stream_best": round(max(st) / max(raw), 3),
                    f"{kind}_ratio_stream_best_to_raw_ram": round(max(st) / max(raw_ram), 3),
                    f"{kind}_ratio_stream_pairs_median": round(statistics.median(
                        c / w for c, w in zip(st, raw, strict=True)), 3),
                    f"{kind}_ratio_stream_pairs_median_to_raw_ram": round(statistics.median(
                        c / w for c, w in zip(st, raw_ram, strict=True)), 3),
                    f"{kind}_ratio_stream_pairs_median_to_pipe": round(statistics.median(
                        c / w for c, w in zip(st, pipe, strict=True)), 3),
                }
            out |= {"cpu_s_per_gb_median": {k: round(statistics.median(x), 3)
                                            for k, x in cpu.items()},
                    "loadavg_start": load0,
                    "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]}
            print(json.dumps(out))
            lib.close()
        finally:
            v.stop()


if __name__ == "__main__":
    main()
