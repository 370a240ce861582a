"""Where one full image backup's time goes: CPU per stage and the wall split, in one process.

Backs the benchmark image (``bench_image.py``'s, built once in the workdir and reused) up with
``backup_disk`` + ``commit_point`` — the CLI's data path without the CLI — into a fresh
repository (defaults of ``Repository.init``: format 4, zstd-1, unencrypted, on the workdir's
file system), once per round and mode:

``stages``  every stage call of the data path wrapped with ``time.thread_time()`` (CPU seconds
            of the calling thread, user + system, waits excluded), summed over all threads:
            ``pread`` (the source read), ``xxh3`` (``ChunkHasher.fingerprint``), ``blake3 frame``
            (``chunk_id`` of a whole frame) and ``blake3 pieces`` (of a content-defined piece),
            ``cdc cuts`` (``frame_cuts``: FastCDC), ``zstd units`` (``BlobCodec.encode_unit``, a
            frame's new pieces together, including the join when they are not adjacent),
            ``zstd blobs`` (``BlobCodec.encode``: frames stored whole, and each piece again of a
            unit that saved too little), ``session add`` / ``session add unit`` (the ordered
            consumer handing payloads to the write session: pack building, sealing) and
            ``upload`` (``WriteSession._upload`` on the uploader threads: pack trailer and id,
            the ``O_DIRECT`` copy and writes, ``fsync``).  ``other`` is the backup's process CPU
            (``time.process_time``) minus the stages: Python glue in the workers and the
            consumer, thread hand-offs, zero tests, the index at commit.  The wrappers cost CPU
            themselves: ``wrapper_overhead_s`` estimates it (calls × a calibrated per-call cost).
``bare``    no stage wrappers; only the marks of the wall split (one wrapper per frame read and
            one around the commit).

The wall split (both modes): ``start`` from the ``backup_disk`` call to its first ``pread``
(plan, write session, thread pool); ``data path`` from there to the start of
``WriteSession.commit`` (every frame read, hashed, compressed and handed over; ``cores`` = process
CPU ÷ wall over that span); ``commit`` (the last packs sealed, written and ``fsync``-ed, the
index written) and the rest of ``backup_disk``; ``manifest`` (``commit_point``).  What the CLI
adds before and after (imports, arguments, opening the repository, exit) is not in here:
``bench_backup_startup.py`` measures that.

    uv run --frozen python bench/bench_backup_stages.py --workdir /tmp/stages [--size-gib 4] \\
        [--rounds 3] [--warmup 1] [--modes bare,stages] [--workers N] [--image PATH] \\
        [--inflight N] [--thread-states]

``--inflight N``: frames in flight per worker (``disk_backup.INFLIGHT_PER_WORKER``; the data
path's default when not given).  ``--thread-states``: each round's ``backup_disk`` is watched by
``thread_states.py`` (a separate process reading ``/proc``; pool threads are given their names
with ``prctl``) and the round gains ``thread_states``: per thread group the average number of
its threads running or runnable (``R``), waiting on a futex (the GIL, a condition or a lock:
``S futex_do_wait``) or in I/O (``D …``), and how often 0–3 chunk workers were running.

Output: one JSON object (every round, and per mode the medians), the load average before and
after.  CPU seconds are the robust figures on a shared machine; wall times move with other
processes and with the host disk (docs/performance.md "Full backup speed, session 8").
"""

from __future__ import annotations

import time

SCRIPT_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image  # noqa: E402

from vmkeep.storage import disk_backup  # noqa: E402
from vmkeep.storage.disk_backup import backup_disk, commit_point  # noqa: E402
from vmkeep.storage.repository import Repository  # noqa: E402
from vmkeep.storage.writer import WriteSession  # noqa: E402

IMPORTED = time.perf_counter()
STAGES = (
    "pread", "xxh3", "blake3 frame", "blake3 pieces", "cdc cuts", "zstd units", "zstd blobs",
    "session add", "session add unit", "upload",
)  # fmt: skip


class Probe:
    """Stage CPU (thread-safe sums of ``thread_time`` deltas) and the wall split's marks."""

    def __init__(self, stages: bool) -> None:
        self.stages = stages
        self.cpu: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.marks: dict[str, tuple[float, float]] = {}  # name -> (perf_counter, process_time)
        self._lock = threading.Lock()

    def mark(self, name: str) -> None:
        """Record the first time ``name`` is reached.  Called on every frame read: once a mark is
        set it returns at once — ``time.process_time()`` (``CLOCK_PROCESS_CPUTIME_ID``, summed
        over the process's threads by the kernel, with the GIL held) on every read was 18 % of
        the GIL-holding samples py-spy took (docs/performance.md: no measurable wall time)."""
        if name in self.marks:
            return
        now = (time.perf_counter(), time.process_time())
        with self._lock:
            self.marks.setdefault(name, now)

    def wrap(self, fn: Callable[..., Any], name: str | Callable[..., str]) -> Callable[..., Any]:
        if not self.stages:
            return fn

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                stage = name if isinstance(name, str) else name(*args)
                with self._lock:
                    self.cpu[stage] += spent
                    self.calls[stage] += 1

        return timed


def _blake3_stage(data: object, *_: object) -> str:
    # the data path hashes a whole frame as the ``bytes`` it read, a piece as a memoryview of it
    return "blake3 frame" if isinstance(data, bytes) else "blake3 pieces"


def instrument(repo: Repository, probe: Probe) -> Callable[[], None]:
    """Install the probe's wrappers for one backup into ``repo``; returns the undo."""
    hasher, codec = repo.hasher, repo.codec
    hasher.chunk_id = probe.wrap(hasher.chunk_id, _blake3_stage)  # type: ignore[method-assign]
    hasher.fingerprint = probe.wrap(hasher.fingerprint, "xxh3")  # type: ignore[method-assign]
    codec.encode = probe.wrap(codec.encode, "zstd blobs")  # type: ignore[method-assign]
    codec.encode_unit = probe.wrap(codec.encode_unit, "zstd units")  # type: ignore[method-assign]
    real_cuts, real_make_pread = disk_backup.frame_cuts, disk_backup.make_pread
    disk_backup.frame_cuts = probe.wrap(real_cuts, "cdc cuts")

    def make_pread(source: Any) -> Callable[[int, int], bytes]:
        pread = probe.wrap(real_make_pread(source), "pread")

        def marked(offset: int, length: int) -> bytes:
            probe.mark("first read")
            return pread(offset, length)

        return marked

    disk_backup.make_pread = make_pread

    def write_session() -> WriteSession:
        session = WriteSession(repo)
        session.add = probe.wrap(session.add, "session add")  # type: ignore[method-assign]
        session.add_unit = probe.wrap(session.add_unit, "session add unit")  # type: ignore[method-assign]
        session._upload = probe.wrap(session._upload, "upload")  # type: ignore[method-assign]
        commit = session.commit

        def marked_commit() -> str | None:
            probe.mark("commit")
            return commit()

        session.commit = marked_commit  # type: ignore[method-assign]
        return session

    repo.write_session = write_session  # type: ignore[method-assign]

    def undo() -> None:
        disk_backup.frame_cuts, disk_backup.make_pread = real_cuts, real_make_pread

    return undo


def wrapper_cost(calls: int = 200_000) -> float:
    """CPU seconds one stage wrapper adds to a call (calibrated on a no-op, this thread)."""
    probe = Probe(stages=True)
    probe.cpu["bench"], probe.calls["bench"] = 0.0, 0

    def nothing(*_: object) -> None:
        return None

    wrapped = probe.wrap(nothing, "bench")
    started = time.thread_time()
    for _ in range(calls):
        nothing(b"")
    bare = time.thread_time() - started
    started = time.thread_time()
    for _ in range(calls):
        wrapped(b"")
    return max(0.0, (time.thread_time() - started - bare) / calls)


class ThreadStates:
    """``thread_states.py`` watching this process while a backup runs (``--thread-states``)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("thread_states.py")), str(os.getpid()),
             "--prefix", "vmkeep-chunk"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        # empty when the backup ended before the sampler had started sampling
        return dict(json.loads(out)) if out.strip() else {"samples": 0}


def name_pool_threads() -> None:
    """Give each ``ThreadPoolExecutor`` thread its Python name as its OS name (``comm``), so
    that ``thread_states.py`` can tell chunk workers, uploaders and the rest apart."""
    import ctypes
    from concurrent.futures import thread

    prctl = ctypes.CDLL(None).prctl
    original = thread.ThreadPoolExecutor.__init__

    def named_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        initializer, initargs = self._initializer, self._initargs

        def name_then_init(*a: Any) -> None:
            pr_set_name = 15
            prctl(pr_set_name, threading.current_thread().name.encode()[:15], 0, 0, 0)
            if initializer is not None:
                initializer(*a)

        self._initializer, self._initargs = name_then_init, initargs

    thread.ThreadPoolExecutor.__init__ = named_init  # type: ignore[method-assign]


def one(
    work: Path,
    image: Path,
    mode: str,
    workers: int | None,
    per_call: float,
    thread_states: bool = False,
) -> dict[str, Any]:
    root = work / "repo"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    repo = Repository.init(str(root))
    init_s = time.perf_counter() - started
    probe = Probe(stages=mode == "stages")
    undo = instrument(repo, probe)
    load = os.getloadavg()[0]
    try:
        with open(image, "rb") as f:
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            watcher = ThreadStates() if thread_states else None
            t0, cpu0 = time.perf_counter(), time.process_time()
            result = backup_disk(repo, f, image.stat().st_size, name=image.name, workers=workers)
            t1, cpu1 = time.perf_counter(), time.process_time()
            states = watcher.stop() if watcher is not None else None
            commit_point(repo, "bench", [result])
            t2, cpu2 = time.perf_counter(), time.process_time()
            usage = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        undo()
    (first, first_cpu), (commit, commit_cpu) = probe.marks["first read"], probe.marks["commit"]
    data_s = commit - first
    row: dict[str, Any] = {
        "mode": mode,
        "load": round(load, 2),
        "repo_init_s": round(init_s, 3),
        "wall_s": round(t2 - t0, 3),
        "cpu_s": round(cpu2 - cpu0, 3),
        "user_s": round(usage.ru_utime - usage0.ru_utime, 3),
        "sys_s": round(usage.ru_stime - usage0.ru_stime, 3),
        "minor_faults": usage.ru_minflt - usage0.ru_minflt,
        "split": {
            "start_s": round(first - t0, 3),
            "start_cpu_s": round(first_cpu - cpu0, 3),
            "data_path_s": round(data_s, 3),
            "data_path_cpu_s": round(commit_cpu - first_cpu, 3),
            "data_path_cores": round((commit_cpu - first_cpu) / data_s, 2) if data_s else None,
            "commit_s": round(t1 - commit, 3),
            "commit_cpu_s": round(cpu1 - commit_cpu, 3),
            "manifest_s": round(t2 - t1, 3),
            "manifest_cpu_s": round(cpu2 - cpu1, 3),
        },
        "bytes_stored": result.stats.bytes_stored,
        "units": result.stats.units_new,
        "pieces": result.stats.pieces_new,
        "frames_zero": result.stats.chunks_zero,
    }
    if states is not None:
        row["thread_states"] = states
    if probe.stages:
        staged = sum(probe.cpu.values())
        calls = sum(probe.calls.values())
        row["stages_cpu_s"] = {k: round(v, 3) for k, v in probe.cpu.items()}
        row["stages_cpu_s"]["other"] = round(cpu1 - cpu0 - staged, 3)
        row["stage_calls"] = dict(probe.calls)
        row["wrapper_overhead_s"] = round(calls * per_call, 3)
    repo.close()
    shutil.rmtree(root)
    return row


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    out: dict[str, Any] = {
        "wall_s": med([r["wall_s"] for r in rows]),
        "cpu_s": med([r["cpu_s"] for r in rows]),
        "split": {k: med([r["split"][k] for r in rows]) for k in rows[0]["split"]},
    }
    if "stages_cpu_s" in rows[0]:
        out["stages_cpu_s"] = {
            k: med([r["stages_cpu_s"][k] for r in rows]) for k in rows[0]["stages_cpu_s"]
        }
        out["wrapper_overhead_s"] = med([r["wrapper_overhead_s"] for r in rows])
    if "thread_states" in rows[0]:
        states = [r["thread_states"] for r in rows if r["thread_states"].get("samples")]
        states = states or [{"groups": {}, "running": {}}]
        out["thread_states"] = {
            "groups": {
                group: {
                    state: med([s["groups"].get(group, {}).get(state, 0.0) for s in states])
                    for state in shares
                }
                for group, shares in states[0]["groups"].items()
            },
            "running": {
                prefix: {
                    n: med([s["running"].get(prefix, {}).get(n, 0.0) for s in states])
                    for n in shares
                }
                for prefix, shares in states[0]["running"].items()
            },
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unrecorded backups first (page cache, allocator, lazy imports)",
    )
    parser.add_argument("--modes", default="bare,stages")
    parser.add_argument("--workers", type=int, help="backup_disk's workers (default: its own)")
    parser.add_argument("--inflight", type=int, help="frames in flight per worker (default: "
                        f"the data path's, {disk_backup.INFLIGHT_PER_WORKER})")
    parser.add_argument("--thread-states", action="store_true",
                        help="sample the threads' scheduler states during each backup")
    args = parser.parse_args()
    if args.inflight:
        disk_backup.INFLIGHT_PER_WORKER = args.inflight
    if args.thread_states:
        name_pool_threads()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VMKEEP_STATE_DIR", str(work / "state"))
    image = args.image or build_image(work, args.size_gib)
    modes = args.modes.split(",")
    per_call = wrapper_cost()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for _ in range(args.warmup):
        one(work, image, modes[0], args.workers, per_call, args.thread_states)
    rows: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for mode in modes if rnd % 2 == 0 else list(reversed(modes)):
            row = one(work, image, mode, args.workers, per_call, args.thread_states)
            rows.append({"round": rnd + 1, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "image": str(image),
        "image_bytes": image.stat().st_size,
        "cpus": os.cpu_count(),
        "workers": args.workers or (os.cpu_count() or 2) + 1,
        "inflight_per_worker": disk_backup.INFLIGHT_PER_WORKER,
        "started_utc": started,
        "ended_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "imports_s": round(IMPORTED - SCRIPT_STARTED, 3),
        "wrapper_cost_us_per_call": round(per_call * 1e6, 3),
        "median": {m: _medians([r for r in rows if r["mode"] == m]) for m in modes},
        "rounds": rows,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
