"""What fresh anonymous memory costs here, and which ways of faulting it in keep the GIL.

Backs the figures of docs/performance.md ("Tape, run L", item 2) and the module docstring of
``vmkeep/tape/prefetch.py``, which chose private memory pre-faulted with
``madvise(MADV_POPULATE_WRITE)`` through ctypes for the tape reader's buffers.

Part 1, **cost per GB** of ``--mib`` of fresh memory, each variant in a new mapping (unmapped
after each round; ``--rounds`` rounds, variants taking turns; wall and CPU seconds per GB):

* ``shared touched``: ``mmap.mmap(-1, n)`` (shmem: what the reader's buffers were) and one byte
  written per page;
* ``private touched``: ``MAP_PRIVATE | MAP_ANONYMOUS``, one byte written per page;
* ``shared populated``: ``mmap.mmap(-1, n, flags=MAP_SHARED | MAP_POPULATE)``;
* ``private populated``: private, then ``madvise(MADV_POPULATE_WRITE)`` through ctypes.

On a VM whose freed memory goes back to the hypervisor (free page reporting, ballooning), the
first touch of a page costs the host's fault as well; on bare metal these are ~0.1–0.3 s/GB.

Part 2, **who waits for the GIL**: a ticker thread sleeps 1 ms in a loop and records how late
it wakes up while the main thread faults ``--gil-mib`` in, once with
``mmap.mmap(..., MAP_PRIVATE | MAP_POPULATE)`` (the kernel faults every page inside ``mmap()``,
a C call that holds the GIL) and once with ``madvise(MADV_POPULATE_WRITE)`` through ctypes
(ctypes releases the GIL around foreign calls).  The largest lateness is what a tape writer
thread waiting for the GIL between blocks would see.

Part 3, **unmapping a mapped pack**: a ``--pack-mib`` file in the page cache mapped the way
the tape reader maps a cached pack (``vmkeep.tape.prefetch._map``, populated), then closed; the
milliseconds ``munmap`` takes with another thread of the process running on the other CPU (TLB
shoot-downs) — what the drive's writer thread paid at every pack boundary before mappings were
handed to the ``tape-unmap`` thread.

    uv run --frozen python bench/bench_page_faults.py [--mib 256] [--rounds 3] [--gil-mib 512] \
        [--pack-mib 32]

Linux ≥ 5.14 (``MADV_POPULATE_WRITE``).  Output: a table per part, the load average before
and after, and one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import threading
import time
from collections.abc import Callable

MADV_POPULATE_WRITE = 23
PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


def _private(size: int, extra: int = 0) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | extra)


def _touch(m: mmap.mmap) -> None:
    view = memoryview(m)
    for off in range(0, len(m), PAGE):
        view[off] = 1
    view.release()


def _populate_write(m: mmap.mmap) -> None:
    anchor = ctypes.c_char.from_buffer(m)
    try:
        if _libc.madvise(ctypes.addressof(anchor), len(m), MADV_POPULATE_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"madvise(MADV_POPULATE_WRITE): {os.strerror(err)}")
    finally:
        del anchor


def shared_touched(size: int) -> mmap.mmap:
    m = mmap.mmap(-1, size)
    _touch(m)
    return m


def private_touched(size: int) -> mmap.mmap:
    m = _private(size)
    _touch(m)
    return m


def shared_populated(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)


def private_populated(size: int) -> mmap.mmap:
    m = _private(size)
    _populate_write(m)
    return m


VARIANTS: dict[str, Callable[[int], mmap.mmap]] = {
    "shared touched": shared_touched,
    "private touched": private_touched,
    "shared populated": shared_populated,
    "private populated": private_populated,
}


def cost_per_gb(size: int, rounds: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, make in VARIANTS.items():
            t0, c0 = time.perf_counter(), time.process_time()
            m = make(size)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            m.close()
            runs[name].append((wall * 1e9 / size, cpu * 1e9 / size))
    return {
        name: {
            "wall_s_per_gb": round(statistics.median(w for w, _ in r), 3),
            "cpu_s_per_gb": round(statistics.median(c for _, c in r), 3),
            "wall_min": round(min(w for w, _ in r), 3),
            "wall_max": round(max(w for w, _ in r), 3),
        }
        for name, r in runs.items()
    }


def gil_lateness(size: int, fault: Callable[[int], mmap.mmap]) -> dict[str, float]:
    """Largest and median lateness (ms) of a 1 ms sleeper while ``fault`` runs."""
    late: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            late.append((time.perf_counter() - t - 0.001) * 1000)

    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.05)  # the ticker's own baseline first
    before = len(late)
    t0 = time.perf_counter()
    m = fault(size)
    took = time.perf_counter() - t0
    time.sleep(0.01)
    stop.set()
    thread.join()
    m.close()
    during = late[before:] or [0.0]
    return {"fault_ms": round(took * 1000, 1), "ticks": len(during),
            "max_late_ms": round(max(during), 2),
            "median_late_ms": round(statistics.median(during), 3)}


def unmap_ms(size: int, rounds: int) -> dict[str, float]:
    """Median / min / max ms of closing a populated read-only mapping of a cached file."""
    import tempfile

    from vmkeep.tape.prefetch import _map

    took: list[float] = []
    stop = threading.Event()

    def spin() -> None:  # keeps the other CPU in this address space
        while not stop.is_set():
            pass

    with tempfile.NamedTemporaryFile(prefix="vmkeep-bench-unmap-") as f:
        f.write(os.urandom(size))
        f.flush()
        f.seek(0)
        f.read()  # in the page cache
        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            for _ in range(rounds):
                mapped = _map(f.name, populate=True)
                assert mapped is not None
                view, m = mapped
                view.release()
                t0 = time.perf_counter()
                m.close()
                took.append((time.perf_counter() - t0) * 1000)
        finally:
            stop.set()
            spinner.join()
    return {"median_ms": round(statistics.median(took), 2), "min_ms": round(min(took), 2),
            "max_ms": round(max(took), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gil-mib", type=int, default=512)
    ap.add_argument("--pack-mib", type=int, default=32)
    args = ap.parse_args()
    load_before = os.getloadavg()
    costs = cost_per_gb(args.mib << 20, args.rounds)
    gil = {
        "mmap MAP_POPULATE (GIL held)": gil_lateness(
            args.gil_mib << 20, lambda n: _private(n, mmap.MAP_POPULATE)),
        "madvise POPULATE_WRITE via ctypes": gil_lateness(args.gil_mib << 20, private_populated),
    }
    unmap = unmap_ms(args.pack_mib << 20, 5 * args.rounds)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}\n")
    print(f"fresh memory, {args.mib} MiB per mapping, medians of {args.rounds} (min–max wall):\n")
    print("| variant | wall s/GB | CPU s/GB | wall min–max |")
    print("|---|---|---|---|")
    for name, c in costs.items():
        print(f"| {name} | {c['wall_s_per_gb']:.2f} | {c['cpu_s_per_gb']:.2f} | "
              f"{c['wall_min']:.2f}–{c['wall_max']:.2f} |")
    print(f"\na 1 ms sleeper thread while {args.gil_mib} MiB are faulted in:\n")
    print("| how | fault ms | ticks during | largest lateness ms | median lateness ms |")
    print("|---|---|---|---|---|")
    for name, g in gil.items():
        print(f"| {name} | {g['fault_ms']} | {g['ticks']} | {g['max_late_ms']} | "
              f"{g['median_late_ms']} |")
    print(f"\nclosing a populated mapping of a cached {args.pack_mib} MiB file: median "
          f"{unmap['median_ms']} ms (min {unmap['min_ms']}, max {unmap['max_ms']})")
    print(json.dumps({"mib": args.mib, "rounds": args.rounds, "gil_mib": args.gil_mib,
                      "cost": costs, "gil": gil, "unmap": unmap, "load_before": load_before[0],
                      "load_after": load_after[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
