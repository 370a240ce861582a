"""VM backup numbers on the ESX lab: CBT incremental vs full, https vs direct, Prefect overhead.

    uv run python bench/bench_vm.py [--workdir bench-work/vm]

1. ``linux01`` (256 MiB thin + 64 MiB thick disk) backed up in full with each transport
   (``https``: datastore HTTP Range reads through the lab; ``direct``: the datastore folder read
   locally, the LAN-free path) into fresh repositories — MB/s of bytes read.
2. After writing ~1 % of disk 0 (``vmkeep lab write``), a CBT incremental; its time and bytes read
   relative to the full backup (target: ≤ 1/10 of a full).
3. The same small-VM backup run directly and through a running Prefect server (flow + tasks +
   artifacts recorded by the API): the difference is Prefect's overhead per VM backup.
Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/vm"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(  # 4 lab VMs: within the community tier, no licence needed
        VMKEEP_STATE_DIR=str(work / "vmkeep-state"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    os.environ.pop("PREFECT_API_URL", None)
    from vmkeep.lab import runner
    from vmkeep.storage.repository import Repository

    lab = runner.up(n_small=2, port=0, state=work / "lab")
    os.environ.update(VMKEEP_VC_USER=lab.user, VMKEEP_VC_PASSWORD=lab.password)
    conn = {"vcenter": lab.url, "cafile": lab.cafile}
    rows: list[tuple[str, str]] = []
    try:
        from vmkeep.flows.backup_vm import backup_vm
        from vmkeep.flows.run import run_flow

        mounts = {d["name"]: d["local_path"] for d in lab.datastores}
        fulls = {}
        for transport in ("https", "direct"):
            repo = work / f"repo-{transport}"
            Repository.init(str(repo))
            started = time.monotonic()
            s = run_flow(
                backup_vm,
                False,
                repo=str(repo),
                vm="linux01",
                enable_cbt=True,
                transport=transport,
                datastore_mounts=mounts,
                **conn,
            )
            secs = time.monotonic() - started
            read = sum(d["bytes_read"] for d in s["disks"])
            data_path = sum(d["duration_s"] for d in s["disks"])
            fulls[transport] = (secs, read, repo, data_path)
            rows.append(
                (
                    f"full backup of linux01, {transport}",
                    f"{secs:.2f} s, {read / 1e6:.0f} MB read, {read / 1e6 / secs:.0f} MB/s",
                )
            )
        lab.client().write("linux01", 1, disk=0, seed=99)
        secs_full, read_full, repo, path_full = fulls["https"]
        started = time.monotonic()
        s = run_flow(backup_vm, False, repo=str(repo), vm="linux01", **conn)
        secs = time.monotonic() - started
        read = sum(d["bytes_read"] for d in s["disks"])
        path_incr = sum(d["duration_s"] for d in s["disks"])
        modes = ",".join(d["mode"] for d in s["disks"])
        rows.append(
            (
                "CBT incremental after a 1 % write (https)",
                f"{secs:.2f} s ({secs / secs_full:.2f} of the full), {read / 1e6:.1f} MB "
                f"read ({read / read_full:.3f} of the full), modes {modes}; disk data path "
                f"{path_incr:.2f} s vs {path_full:.2f} s ({path_incr / path_full:.3f} of the full)",
            )
        )

        from vmkeep.deployments import prefect_server

        direct_times = []
        repo_small = work / "repo-small"
        Repository.init(str(repo_small))
        for _ in range(args.rounds):
            t = time.monotonic()
            run_flow(backup_vm, False, repo=str(repo_small), vm="small01", **conn)
            direct_times.append(time.monotonic() - t)
        server = prefect_server.start(work / "prefect")
        try:
            os.environ["PREFECT_API_URL"] = server.api_url
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: server.api_url}):
                run_flow(backup_vm, True, repo=str(repo_small), vm="small01", **conn)  # warm-up
                orch_times = []
                for _ in range(args.rounds):
                    t = time.monotonic()
                    run_flow(backup_vm, True, repo=str(repo_small), vm="small01", **conn)
                    orch_times.append(time.monotonic() - t)
        finally:
            server.stop()
            os.environ.pop("PREFECT_API_URL", None)
        d, o = statistics.median(direct_times), statistics.median(orch_times)
        rows.append(("small VM backup, direct (median)", f"{d:.2f} s"))
        rows.append(
            (
                "same, through a running Prefect server (median)",
                f"{o:.2f} s — Prefect overhead ≈ {o - d:.2f} s per VM backup",
            )
        )
    finally:
        runner.down(work / "lab")
    print("\n| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\n{os.cpu_count()} cores; lab disks are small, so MB/s include per-run fixed costs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
