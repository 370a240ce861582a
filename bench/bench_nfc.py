"""NFC transport throughput on the ESX lab, against the https transport, and the reader alone.

    uv run --frozen python bench/bench_nfc.py [--workdir bench-work/nfc] [--rounds 3]

1. ``linux01`` (256 MiB thin + 64 MiB thick disk) backed up in full with ``--transport https``
   and ``--transport nfc`` (ExportSnapshot lease, streamOptimized stream decoded on the fly)
   into fresh repositories, ``--rounds`` times each: median seconds and MB/s of disk bytes.
2. After writing ~1 % of disk 0, an incremental through nfc (CBT says what changed; the whole
   stream is still read, unchanged grains are skipped without inflating): time, stream bytes,
   bytes stored.
3. The streamOptimized reader alone (:mod:`vmkeep.disks.vmdk.stream_optimized`) on qemu-img's
   stream of the lab's 256 MiB ``linux-system`` image: MB/s of disk bytes decoded.
Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import time

from _lab import backup_linux01, fresh_workdir, lab_args, lab_up, new_repo


def main() -> int:
    args = lab_args("nfc").parse_args()
    work = fresh_workdir(args.workdir)
    from vmkeep.disks.vmdk.stream_optimized import StreamReader
    from vmkeep.lab.images import build_image

    rows: list[tuple[str, str]] = []
    image = build_image("linux-system", 256 << 20, seed=11, hostname="linux01").path
    stream = work / "linux-system.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(image), str(stream)], check=True)
    data = stream.read_bytes()
    times = []
    inflated = 0
    for _ in range(args.rounds):
        t = time.monotonic()
        reader = StreamReader(io.BytesIO(data))
        inflated = sum(len(grain) for _off, grain in reader.grains())
        times.append(time.monotonic() - t)
    secs = statistics.median(times)
    rows.append(("streamOptimized reader alone, 256 MiB linux-system (qemu-img stream, "
                 f"{len(data) / 1e6:.1f} MB, {inflated / 1e6:.0f} MB of grains)",
                 f"{secs:.2f} s: {inflated / 1e6 / secs:.0f} MB/s of grains inflated, "
                 f"{len(data) / 1e6 / secs:.0f} MB/s of stream"))

    with lab_up(work) as (lab, conn):
        from vmkeep.flows.backup_vm import backup_vm
        from vmkeep.flows.run import run_flow

        capacity = 320 << 20
        last_repo = None
        for transport in ("https", "nfc"):
            runs = []
            for i in range(args.rounds):
                repo = new_repo(work / f"repo-{transport}-{i}")
                t = time.monotonic()
                backup_linux01(repo, conn, enable_cbt=True, transport=transport)
                runs.append(time.monotonic() - t)
                last_repo = repo
            secs = statistics.median(runs)
            rows.append((f"full backup of linux01 (320 MiB), {transport}, median of "
                         f"{args.rounds}", f"{secs:.2f} s, {capacity / 1e6 / secs:.0f} MB/s of "
                         f"disk ({', '.join(f'{r:.2f}' for r in runs)} s)"))
        served_before = sum(le["bytes_served"] for le in lab.client().request("GET", "nfc/leases"))
        lab.client().write("linux01", 1, disk=0, seed=99)
        t = time.monotonic()
        s = run_flow(backup_vm, False, repo=str(last_repo), vm="linux01", transport="nfc", **conn)
        secs = time.monotonic() - t
        served = sum(le["bytes_served"] for le in lab.client().request("GET", "nfc/leases"))
        new = sum(d.get("bytes_new", 0) for d in s["disks"])
        modes = ",".join(d["mode"] for d in s["disks"])
        rows.append(("incremental through nfc after a 1 % write", f"{secs:.2f} s, modes {modes}, "
                     f"stream {(served - served_before) / 1e6:.1f} MB read whole, "
                     f"{new / 1e6:.1f} MB new"))
    print("\n| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\n{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
