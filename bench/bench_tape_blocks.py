"""Where a tape stream's time goes, block by block: raw writers and copy jobs on one VTL drive.

    uv run --frozen python bench/bench_tape_blocks.py [--tape-dir /dev/shm] [--outstanding N]
        [--depth N] [--sequence precondition,raw,raw_ram,ring_ram,cold,cold,warm]

A diagnostic companion to ``bench_tape.py`` (which gives the verdict ratio): the same tgt
library and 256 MiB repository of incompressible data, then the steps of ``--sequence`` in
order, each timed per block.  Steps:

* ``precondition`` — write every cartridge used once (tgt's sparse cartridge files cost
  allocation on their first write; uncounted);
* ``raw`` — ``bench_tape.raw_rate`` of one cache-hot 1 MiB buffer; ``raw_ram`` — of 256 MiB of
  distinct bytes in memory;
* ``ring_ram`` — the same distinct bytes through a :class:`~vmkeep.tape.stream.BlockWriter` with
  its ring and writer thread (what the copy's writing costs without any reading);
* ``cold`` / ``warm`` — ``copy_points`` after dropping / filling the repository's page cache.

Per step: MB/s, the seconds spent inside the drive's WRITE path (``write_block`` or, with queued
WRITEs, submitting and collecting them) and inside libiscsi's blocking calls, and the largest
pauses between WRITEs (the drive waiting for data; the first pause of a copy is its set-up
before the first block; with queued WRITEs the write path is only the sending, the waiting is
in libiscsi's calls).  ``--depth``: the ring of ``ring_ram`` and of the copies (0: no ring,
written inline).  Timing wrappers are installed on the classes, so every step pays
the same overhead.  Prints one JSON object per step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_tape as bt

from vmkeep.lab import vtl as vtl_mod
from vmkeep.scsi import iscsi
from vmkeep.scsi.ssc import TapeDrive
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library, LibraryConfig, Pool, save_pool
from vmkeep.tape.stream import DEFAULT_DEPTH, DEFAULT_OUTSTANDING, BlockWriter, Streaming

MIB = 256
writes: list[tuple[float, float]] = []  # (start, end) of each call into the WRITE path
native: list[float] = []  # seconds inside libiscsi's blocking calls


def _instrument() -> None:
    def timed(fn):  # type: ignore[no-untyped-def]
        def run(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                writes.append((t0, time.perf_counter()))
        return run

    TapeDrive.write_block = timed(TapeDrive.write_block)  # type: ignore[method-assign]
    TapeDrive.submit_write = timed(TapeDrive.submit_write)  # type: ignore[method-assign]
    lib = iscsi.library()
    for name in ("iscsi_scsi_command_sync", "iscsi_service"):
        fn = getattr(lib, name)

        def wrapped(*a, _fn=fn):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return _fn(*a)
            finally:
                native.append(time.perf_counter() - t0)
        setattr(lib, name, wrapped)


def ring_rate(
    lib: Library, barcode: str, data: bytes, block: int, outstanding: int, depth: int
) -> float:
    with lib.drive_lock(0):
        d = lib.open_drive(0)
        lib.load(barcode, 0)
        d.wait_ready()
        d.set_variable_blocks()
        d.rewind()
        bw = BlockWriter(d, block, depth, outstanding)
        view = memoryview(data)
        for off in range(0, len(data), block):
            bw.write(view[off : off + block])
        bw.close()
        lib.unload(0)
        d.close()
    assert bw.started is not None and bw.finished is not None
    return len(data) / 1e6 / (bw.finished - bw.started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tape-dir", type=Path, default=None)
    ap.add_argument("--outstanding", type=int, default=DEFAULT_OUTSTANDING)
    ap.add_argument("--depth", type=int, default=DEFAULT_DEPTH)
    ap.add_argument("--sequence", default="precondition,raw,raw_ram,ring_ram,cold,cold,warm")
    a = ap.parse_args()
    _instrument()
    block = 1 << 20
    with tempfile.TemporaryDirectory(prefix="vmkeep-bench-blocks-") as tmp:
        root = Path(tmp)
        tape_root = root if a.tape_dir is None else Path(
            tempfile.mkdtemp(prefix="vmkeep-bench-blocks-", dir=a.tape_dir))
        os.environ["VMKEEP_TAPE_DIR"] = str(root / "tapecfg")
        os.environ["VMKEEP_STATE_DIR"] = str(root / "state")
        v = vtl_mod.start(tape_root / "vtl", size_mb=2000)
        try:
            cfg = LibraryConfig("bench", f"{v.url}/{v.changer_lun}",
                                [f"{v.url}/1", f"{v.url}/2"])
            cfg.save()
            save_pool(Pool("bench", 0, append=False))
            lib = Library(cfg)
            img = root / "img"
            img.write_bytes(os.urandom(MIB << 20))
            repo = Repository.init(str(root / "repo"))
            with open(img, "rb") as f:
                res = backup_disk(repo, f, img.stat().st_size)
            point = commit_point(repo, "bench", [res])
            img.unlink()
            ram = os.urandom(MIB << 20)
            for step in a.sequence.split(","):
                writes.clear()
                native.clear()
                if step == "precondition":
                    for barcode in (v.barcodes[0], v.barcodes[-2], v.barcodes[-1]):
                        bt.raw_rate(lib, barcode, MIB << 20, block, outstanding=a.outstanding)
                    continue
                if step == "raw":
                    rate = bt.raw_rate(lib, v.barcodes[-1], MIB << 20, block,
                                       outstanding=a.outstanding)
                elif step == "raw_ram":
                    rate = bt.raw_rate(lib, v.barcodes[-2], MIB << 20, block, ram,
                                       a.outstanding)
                elif step == "ring_ram":
                    rate = ring_rate(lib, v.barcodes[-2], ram, block, a.outstanding, a.depth)
                elif step in ("cold", "warm"):
                    (bt.drop_cache if step == "cold" else bt.warm_cache)(
                        Path(repo.raw_backend.location))
                    rep = copy_points(repo, lib, [point.id], "bench", drive_index=0,
                                      block_size=block,
                                      streaming=Streaming(a.depth, a.outstanding))
                    lib.update_media(rep.cartridges[0], pool=None, files=0)
                    rate = rep.bytes / 1e6 / rep.stream_seconds
                else:
                    raise SystemExit(f"unknown step {step!r}")
                pauses = sorted(writes[i + 1][0] - writes[i][1] for i in range(len(writes) - 1))
                print(json.dumps({
                    "step": step, "mb_s": round(rate, 1), "write_calls": len(writes),
                    "in_write_path_s": round(sum(e - s for s, e in writes), 3),
                    "in_libiscsi_s": round(sum(native), 3),
                    "largest_pauses_ms": [round(p * 1000, 1) for p in pauses[-3:]],
                    "outstanding": a.outstanding, "depth": a.depth,
                }), flush=True)
            lib.close()
        finally:
            v.stop()
            if a.tape_dir is not None:
                import shutil

                shutil.rmtree(tape_root, ignore_errors=True)


if __name__ == "__main__":
    main()
