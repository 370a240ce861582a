"""Sample a process's threads from outside: who runs, who waits, and on what.

    python bench/thread_states.py PID [--interval-ms 5] [--prefix vmkeep-chunk ...]

Every ``interval`` it reads ``/proc/PID/task/*/{comm,stat,wchan}`` — the scheduler's state
(``R`` running or runnable, ``S`` sleeping, ``D`` in uninterruptible I/O) and, for a sleeping
thread, the kernel function it waits in (``futex_do_wait``: a lock, a condition or Python's GIL;
``__iomap_dio_rw``: an ``O_DIRECT`` write) — until the process exits or this sampler gets
``SIGTERM``/``SIGINT``; then it prints one JSON object:

``samples``         the samples taken while at least one thread of a ``--prefix`` group existed
``groups``          per thread group (the thread's name up to its first digit, e.g.
                    ``vmkeep-chunk_``), the share of samples in each ``state wchan``, summed over
                    the group's threads (0.47 = half a thread on average)
``running``         per ``--prefix`` group, the share of samples with N of its threads in ``R``

Threads are named by ``comm`` (Linux's 15-character thread name): a Python thread has its
process's name unless the program sets it (``bench_backup_stages.py --thread-states`` names
each pool thread after its ``thread_name_prefix`` with ``prctl(PR_SET_NAME)``).  The sampler
is a separate process so that it does not take the GIL of the process it watches; it still
takes some CPU (one read of three small files per thread per sample), so run it where a core
of headroom does not change the picture much, or compare runs that all carry it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from typing import Any

_GROUP = re.compile(r"^(.*?)(?:_?\d+)?$")


def sample_once(pid: int) -> list[tuple[str, str, str]] | None:
    """``(comm, state, wchan)`` of each thread of ``pid``; ``None`` once it has exited."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = []
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            with open(f"{base}/stat") as f:
                stat = f.read()
            state = stat[stat.rindex(")") + 2]
            wchan = ""
            if state != "R":
                with open(f"{base}/wchan") as f:
                    wchan = f.read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append((comm, state, wchan))
    return out


def group_of(comm: str) -> str:
    """``vmkeep-chunk_2`` → ``vmkeep-chunk``; other names as they are."""
    match = _GROUP.match(comm)
    return (match.group(1) if match else comm).rstrip("_-") or comm


def sample(pid: int, interval: float, prefixes: list[str]) -> dict[str, Any]:
    stop = False

    def stopping(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    samples = 0
    states: Counter[tuple[str, str]] = Counter()
    running: dict[str, Counter[int]] = {p: Counter() for p in prefixes}
    while not stop:
        snap = sample_once(pid)
        if snap is None:
            break
        if not prefixes or any(c.startswith(p) for c, _, _ in snap for p in prefixes):
            samples += 1
            for comm, state, wchan in snap:
                states[(group_of(comm), f"{state} {wchan}".strip())] += 1
            for p in prefixes:
                running[p][sum(1 for c, s, _ in snap if s == "R" and c.startswith(p))] += 1
        time.sleep(interval)
    groups: dict[str, dict[str, float]] = {}
    for (group, state), n in sorted(states.items(), key=lambda kv: -kv[1]):
        groups.setdefault(group, {})[state] = round(n / max(samples, 1), 3)
    return {
        "samples": samples,
        "interval_ms": round(interval * 1000, 2),
        "groups": groups,
        "running": {
            p: {str(k): round(v / max(samples, 1), 3) for k, v in sorted(c.items())}
            for p, c in running.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--prefix", action="append", default=[],
                        help="a thread-name group to count running threads of (repeatable); "
                        "samples are kept only while one of its threads exists")
    args = parser.parse_args()
    print(json.dumps(sample(args.pid, args.interval_ms / 1000, args.prefix)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
