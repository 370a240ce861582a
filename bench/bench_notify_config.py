"""What job reports cost a flow run: reading where they go, and the watch around the job.

A run under Prefect whose worker has no ``VMKEEP_NOTIFY`` reads the Secret block
``vmkeep-notify`` (:func:`vmkeep.runtime.prefect_reports.notify_config`); the watch
(:func:`vmkeep.runtime.notify.watch`) does that in a thread beside the job.  Measured against a
Prefect server started here (SQLite, loopback), medians of ``--calls``:

* ``config_*``: one ``notify_config()`` — no block, the block saved, ``VMKEEP_NOTIFY`` set;
* ``watch_*``: a watch around a job that sleeps ``--job-ms`` (the block saved, report status
  ``success`` not sent), minus that sleep: what the watch adds to a run's wall time.

    uv run --frozen python bench/bench_notify_config.py [--calls 30] [--job-ms 100]

Milliseconds: record the machine's load with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def median_ms(fn: Callable[[], Any], calls: int) -> float:
    times = []
    for _ in range(calls):
        begun = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begun)
    return round(statistics.median(times) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--job-ms", type=float, default=100.0)
    args = parser.parse_args()

    from vmkeep.deployments import prefect_server

    server = prefect_server.start(Path(tempfile.mkdtemp(prefix="bench-notify-")))
    os.environ["PREFECT_API_URL"] = server.api_url
    for name in ("VMKEEP_NOTIFY", "VMKEEP_NOTIFY_FILE", "VMKEEP_NOTIFY_ON"):
        os.environ.pop(name, None)
    try:
        from prefect.blocks.system import Secret

        from vmkeep.runtime import notify
        from vmkeep.runtime.prefect_reports import notify_config

        def job(spec: Any, rt: Any) -> dict[str, Any]:
            time.sleep(args.job_ms / 1000)
            return {}

        def watched() -> None:
            with notify.watch(job, {}, notify_config) as run:
                run.result = job({}, None)

        notify_config()  # first use: imports, the client's connection
        result: dict[str, Any] = {"config_no_block_ms": median_ms(notify_config, args.calls)}
        watch_calls = max(5, args.calls // 3)
        result["watch_no_block_ms"] = round(
            median_ms(watched, watch_calls) - args.job_ms, 3)
        block = {"urls": ["json://127.0.0.1:9/x"], "on": "failure"}
        Secret(value=json.dumps(block)).save(notify.BLOCK, overwrite=True)
        result["config_block_ms"] = median_ms(notify_config, args.calls)
        result["watch_block_ms"] = round(median_ms(watched, watch_calls) - args.job_ms, 3)
        os.environ["VMKEEP_NOTIFY"] = "json://127.0.0.1:9/x"
        result["config_env_ms"] = median_ms(notify_config, args.calls)
        result["load_avg"] = os.getloadavg()
        print(json.dumps(result))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
