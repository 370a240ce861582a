"""One global-concurrency slot lease against a Prefect API that answers the first try with 503.

Reproduces the measurement behind ``vmkeep.runtime.api_calls`` (``quick()`` and the shim
``_SleepAfterLastAttemptSkipped``) as used by ``_PrefectSlots._lease`` in
``vmkeep/runtime/prefect_runtime.py``: a Prefect server on SQLite answers ``503`` while its
database is locked, for milliseconds; Prefect's synchronous client then sleeps ``2 ** attempt``
s (≈ 2 s, jittered) — and, with its retries turned off, still sleeps that back-off after its only
attempt (prefect 3.x ``PrefectHttpxSyncClient._send_with_retry``).  docs/performance.md
"Orchestration overhead", third and fourth pass.

The server here is a stand-in (``http.server`` on loopback, HTTP/1.1): every ``GET`` gets a CSRF
token, the first ``POST`` of each lease ``503``, the next one a lease.  Each lease uses a fresh
``_PrefectSlots`` (its own Prefect client, created before the clock starts) and is timed wall
clock from the lease call to its answer.  Variants, alternating per round:

* ``quick``: ``_PrefectSlots._lease`` as shipped (``quick()``, the shim in place)
* ``quick_without_shim``: the same with the shim taken out (Prefect's client module sees the
  real ``time`` again): what the third pass shipped before the fourth
* ``prefect_retries``: Prefect's own client call with its own retries (before the third pass)
* ``quick_no_503``: as shipped, the server answering at once (the lease's floor here)

and the cost of the ``quick()`` wrapper itself around a call that does nothing (its settings
context, no server).  Output: one JSON object, medians and every round.

    uv run --frozen python bench/bench_prefect_lease.py [--rounds 5] [--wrapper-calls 2000]

Wall seconds of a 2 s sleep are not sensitive to load; the milliseconds of the fast variants
are: record the load with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLDER = "00000000-0000-0000-0000-000000000002"
LEASE = "00000000-0000-0000-0000-000000000001"
NAMES = ["vmkeep-host-esx01"]


class BusyServer(ThreadingHTTPServer):
    """The Prefect API stand-in: ``fail_next`` POSTs are answered 503, then a lease."""

    daemon_threads = True
    posts = 0
    fail_next = 0


class Busy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BusyServer

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, {"token": "t", "client": "c", "expiration": "2099-01-01T00:00:00Z"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.posts += 1
        if self.server.fail_next > 0:  # SQLite was locked: Prefect's server answers 503
            self.server.fail_next -= 1
            self._answer(503, {"exception_message": "Service Unavailable"})
        else:
            self._answer(200, {"lease_id": LEASE, "limits": [{"name": n} for n in NAMES]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wrapper-calls", type=int, default=2000)
    args = parser.parse_args()

    server = BusyServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tempfile.mkdtemp(prefix="vmkeep-bench-lease-")
    os.environ["PREFECT_HOME"] = home  # no profile or database of the user's touched
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{server.server_port}/api"

    import prefect
    import prefect.client.base as client_base
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    from vmkeep.runtime import api_calls
    from vmkeep.runtime.prefect_runtime import _PrefectSlots

    def shipped(slots: _PrefectSlots) -> str:
        return slots._lease(slots.client(), NAMES)[0]

    def without_shim(slots: _PrefectSlots) -> str:
        installed = api_calls._skip_prefects_last_sleep
        shim = client_base.time
        client_base.time = time  # type: ignore[assignment]
        api_calls._skip_prefects_last_sleep = lambda: None  # type: ignore[assignment]
        try:
            return slots._lease(slots.client(), NAMES)[0]
        finally:
            api_calls._skip_prefects_last_sleep = installed  # type: ignore[assignment]
            client_base.time = shim  # type: ignore[assignment]

    def prefect_retries(slots: _PrefectSlots) -> str:
        from uuid import UUID

        response = slots.client().increment_concurrency_slots_with_lease(
            names=NAMES,
            slots=1,
            mode="concurrency",
            lease_duration=slots.LEASE_S,
            holder=ConcurrencyLeaseHolder(type="flow_run", id=UUID(HOLDER)),
        )
        return str(response.json()["lease_id"])

    variants: dict[str, tuple[Callable[[_PrefectSlots], str], int]] = {
        "quick": (shipped, 1),
        "quick_without_shim": (without_shim, 1),
        "prefect_retries": (prefect_retries, 1),
        "quick_no_503": (shipped, 0),
    }

    def lease_once(fn: Callable[[_PrefectSlots], str], fail: int) -> dict[str, float]:
        slots = _PrefectSlots({}, HOLDER)
        slots.client()  # the client exists before the clock starts (a run's pool keeps one)
        server.fail_next, server.posts = fail, 0
        started = time.perf_counter()
        lease = fn(slots)
        wall = time.perf_counter() - started
        posts = server.posts
        slots.close()
        if lease != LEASE:
            raise SystemExit(f"unexpected lease {lease!r}")
        return {"wall_s": wall, "posts": posts}

    load_before = os.getloadavg()
    for fn, fail in variants.values():  # warm-up: imports on first use, connections
        lease_once(fn, fail)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for rnd in range(args.rounds):
        order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
        for name in order:
            rounds[name].append(lease_once(*variants[name]))

    # the quick() wrapper alone: a call that does nothing, with and without it
    def nothing() -> None:
        return None

    started = time.perf_counter()
    for _ in range(args.wrapper_calls):
        nothing()
    bare = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.wrapper_calls):
        api_calls.quick(nothing)
    wrapped = time.perf_counter() - started
    server.shutdown()
    server.server_close()

    result: dict[str, object] = {
        "prefect": prefect.__version__,
        "rounds": args.rounds,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    for name, rows in rounds.items():
        result[name] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in rows), 4),
            "wall_s_rounds": [round(r["wall_s"], 4) for r in rows],
            "posts": sorted({int(r["posts"]) for r in rows}),
        }
    result["quick_wrapper_ms_per_call"] = round((wrapped - bare) / args.wrapper_calls * 1e3, 4)
    print(json.dumps(result, indent=2))
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
