"""Instant VM recovery numbers on the ESX lab: time to a powered-on VM, finalize, cancel.

    uv run --frozen python bench/bench_instant.py [--workdir DIR] [--rounds 3]

``linux01`` (256 MiB thin system disk + 64 MiB thick data disk, real ext4 file systems) is backed
up once.  Each round runs ``instant-restore`` (in-process, excluding interpreter start): export
started (nbdkit + nbdfuse + FUSE view + nfs-ganesha), NAS datastore mounted on the host through
the lab's libnfs client, VM created and powered on — then cancels it; the last round finalizes
instead (storage vMotion to ``nfs01``: every allocated byte is read through NFS from the
repository).  Reports the medians, bytes fetched from the repository (cancel: what start-up and
registration read; finalize: the whole copy) and, for comparison, one ``restore vm`` (NFC) of the
same point.  Then instant disk recovery into that restored VM (running): ``instant-restore disk``
of linux01's 64 MiB data disk, cancelled, then again and finalized to ``datastore1`` (storage
vMotion of that disk alone).  Prints a Markdown table for docs/performance.md and one JSON line.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from _lab import backup_linux01, fresh_workdir, lab_args, lab_up, new_repo


def main() -> int:
    args = lab_args("instant").parse_args()
    work = fresh_workdir(args.workdir)
    from vmkeep.browse import instant
    from vmkeep.flows.restore_vm import restore_vm
    from vmkeep.flows.run import run_flow
    from vmkeep.tasks.vcenter import open_session
    from vmkeep.vsphere.target import VCenterTarget

    results: dict[str, Any] = {}
    with lab_up(work) as (lab, conn):
        host = lab.vm("linux01")["host"]
        repo = new_repo(work / "repo")
        point = backup_linux01(repo, conn, quiesce=False)
        session = open_session(VCenterTarget(lab.url, cafile=lab.cafile))
        starts, cancels, fetched = [], [], []
        try:
            for i in range(args.rounds):
                t0 = time.perf_counter()
                rec = instant.start(session, str(repo), point["id"], vcenter=lab.url, host=host,
                                    name=f"bench-instant-{i}", nfs_port=0)
                starts.append(time.perf_counter() - t0)
                results.setdefault("phases", []).append(rec.get("phases"))
                if i < args.rounds - 1:
                    t0 = time.perf_counter()
                    rec = instant.cancel(session, rec)
                    cancels.append(time.perf_counter() - t0)
                    fetched.append(rec.get("bytes_fetched") or 0)
                else:
                    t0 = time.perf_counter()
                    rec = instant.finalize(session, rec, "nfs01")
                    results["finalize_s"] = round(time.perf_counter() - t0, 2)
                    results["finalize_fetched"] = rec.get("bytes_fetched") or 0
        finally:
            session.close()
        results["start_s"] = round(statistics.median(starts), 2)
        results["start_all_s"] = [round(s, 2) for s in starts]
        results["cancel_s"] = round(statistics.median(cancels), 2) if cancels else None
        results["start_fetched"] = statistics.median(fetched) if fetched else None
        t0 = time.perf_counter()
        s = run_flow(restore_vm, False, repo=str(repo), point=point["id"], name="bench-nfc",
                     datastore="nfs01", transport="nfc", power_on_after=True, **conn)
        results["restore_vm_nfc_s"] = round(time.perf_counter() - t0, 2)
        results["capacity"] = sum(d["bytes"] for d in s["disks"])
        from vmkeep.browse import instant_disks

        session = open_session(VCenterTarget(lab.url, cafile=lab.cafile))
        try:
            for last in (False, True):
                t0 = time.perf_counter()
                rec = instant_disks.attach(session, str(repo), point["id"], vcenter=lab.url,
                                           vm="bench-nfc", disks=["1"], nfs_port=0)
                results.setdefault("disk_attach_s", []).append(round(time.perf_counter() - t0, 2))
                t0 = time.perf_counter()
                if last:
                    rec = instant_disks.finalize(session, rec, "datastore1")
                    results["disk_finalize_s"] = round(time.perf_counter() - t0, 2)
                    results["disk_finalize_fetched"] = rec.get("bytes_fetched") or 0
                else:
                    instant_disks.cancel(session, rec)
                    results["disk_cancel_s"] = round(time.perf_counter() - t0, 2)
        finally:
            session.close()
    mb = 1e6
    print("| what | result |")
    print("| --- | --- |")
    print(f"| `instant-restore` of linux01 ({results['capacity'] / 2**20:.0f} MiB, 2 disks): "
          f"command to powered-on VM (median of {args.rounds}) | {results['start_s']} s |")
    if results["start_fetched"] is not None:
        print(f"| bytes fetched from the repository by start-up, registration and power-on | "
              f"{results['start_fetched'] / mb:.1f} MB |")
    print(f"| `instant-restore cancel` (power off, unregister, unmount, export stopped) | "
          f"{results['cancel_s']} s |")
    print(f"| `instant-restore finalize` (storage vMotion to nfs01 through NFS, unmount, stop) | "
          f"{results['finalize_s']} s, {results['finalize_fetched'] / mb:.1f} MB fetched |")
    print(f"| `restore vm --transport nfc --power-on` of the same point, for comparison | "
          f"{results['restore_vm_nfc_s']} s |")
    print(f"| `instant-restore disk` of linux01's data disk into the running restored VM "
          f"(attach: export up, NAS datastore, ReconfigVM add) | "
          f"{' / '.join(str(x) for x in results['disk_attach_s'])} s |")
    print(f"| its `cancel` (detach, unmount, export stopped) | {results['disk_cancel_s']} s |")
    print(f"| its `finalize` (storage vMotion of that disk alone to datastore1, unmount, stop) | "
          f"{results['disk_finalize_s']} s, {results['disk_finalize_fetched'] / mb:.1f} MB "
          "fetched |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
