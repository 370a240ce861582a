"""VM restore numbers per path on the ESX lab: NFC import vs https PUT vs direct, and thin kept.

    uv run --frozen python bench/bench_restore_paths.py [--workdir DIR] [--rounds 3]

``linux01`` (256 MiB thin system disk + 64 MiB thick data disk, real ext4 file systems) is backed
up once, then restored ``--rounds`` times with each transport into the lab's NFS datastore
``nfs01`` (the one datastore type where all three paths apply; ``direct`` writes the datastore
folder locally).  Per path: median wall time of ``restore vm`` (flow, in-process, excluding
interpreter start), MB/s of disk capacity restored, bytes sent over the network (NFC: the
streamOptimized streams; https: every byte; direct: none) and bytes allocated on the datastore
(the lab's ``datastore_allocated``).  ``--fill P`` first overwrites P % of the system disk with
random (incompressible) data through the lab, for a data-heavy case.  Prints a Markdown table
for docs/performance.md and one JSON line.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from _lab import backup_linux01, fresh_workdir, lab_args, lab_up, new_repo


def main() -> int:
    parser = lab_args("restore-paths")
    parser.add_argument("--fill", type=float, default=0.0,
                        help="percent of disk 0 overwritten with random data before the backup")
    args = parser.parse_args()
    work = fresh_workdir(args.workdir)
    from vmkeep.flows.restore_vm import restore_vm
    from vmkeep.flows.run import run_flow

    results: dict[str, Any] = {}
    with lab_up(work) as (lab, conn):
        client = lab.client()
        mounts = {d["name"]: d["local_path"] for d in lab.datastores}
        repo = new_repo(work / "repo")
        if args.fill:
            client.write("linux01", args.fill, disk=0, seed=7)
        point = backup_linux01(repo, conn, quiesce=False)
        for transport in ("nfc", "https", "direct"):
            walls, sent, grown = [], [], []
            for i in range(args.rounds):
                name = f"bench-{transport}-{i}"
                before = client.status()["datastore_allocated"]["nfs01"]
                started = time.perf_counter()
                s = run_flow(
                    restore_vm, False, repo=str(repo), point=point["id"], name=name,
                    datastore="nfs01", transport=transport, datastore_mounts=mounts, **conn,
                )
                walls.append(time.perf_counter() - started)
                capacity = sum(d["bytes"] for d in s["disks"])
                sent.append(sum(d.get("bytes_sent", d["bytes"] if transport == "https" else 0)
                                for d in s["disks"]))
                grown.append(client.status()["datastore_allocated"]["nfs01"] - before)
            wall = statistics.median(walls)
            results[transport] = {
                "wall_s": round(wall, 2), "capacity": capacity,
                "mb_s": round(capacity / wall / 1e6, 1), "bytes_sent": statistics.median(sent),
                "allocated": statistics.median(grown),
            }
    mib = 1 << 20
    print("| path | restore s (median) | MB/s of capacity | sent MiB | allocated MiB |")
    print("| --- | --- | --- | --- | --- |")
    for t, r in results.items():
        print(f"| {t} | {r['wall_s']} | {r['mb_s']} | {r['bytes_sent'] / mib:.1f} | "
              f"{r['allocated'] / mib:.1f} |")
    print(f"capacity restored per run: {capacity / mib:.0f} MiB")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
