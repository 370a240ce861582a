"""Inventory at scale: time to list every VM of a lab holding N lightweight VMs (no disks).

Starts a lab of its own (``light_vms=N``, plus the ordinary lab VMs without the small ones),
then times ``vmkeep.vsphere.inventory.list_vms`` (paged ``RetrievePropertiesEx`` /
``ContinueRetrievePropertiesEx``, the VMs' backup properties and every host, folder, datacenter
and datastore) ``--rounds`` times on one session, and ``vmkeep doctor --json`` once (a fresh
process: login, privileges on every VM, hosts, datastores).  Reports the median and the spread.

Usage: ``uv run --frozen python bench/bench_inventory.py [--vms 2000] [--rounds 5]``.  One JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmkeep.lab import runner
from vmkeep.vsphere import inventory
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-inventory-"))
    t0 = time.perf_counter()
    info = runner.up(n_small=0, state=state, light_vms=args.vms)
    lab_up = time.perf_counter() - t0
    try:
        session = connect(info.url, Credentials(info.user, info.password),
                          TLSOptions(cafile=info.cafile))
        times, count = [], 0
        for _ in range(args.rounds):
            t = time.perf_counter()
            count = len(inventory.list_vms(session))
            times.append(time.perf_counter() - t)
        session.close()
        pw = state / "pw"
        pw.write_text(info.password)
        os.chmod(pw, 0o600)
        t = time.perf_counter()
        doctor = subprocess.run(
            [sys.executable, "-m", "vmkeep.cli", "doctor", "--vcenter", info.url, "--user",
             info.user, "--password-file", str(pw), "--cafile", info.cafile, "--json"],
            capture_output=True, text=True, env=dict(os.environ, PREFECT_API_URL=""),
        )
        doctor_s = time.perf_counter() - t
        doctor_vms = len(json.loads(doctor.stdout)["vms"]) if doctor.stdout else 0
    finally:
        runner.down(state)
    print(json.dumps({
        "light_vms": args.vms, "vms_listed": count, "rounds": args.rounds,
        "list_vms_median_s": round(statistics.median(times), 3),
        "list_vms_min_s": round(min(times), 3), "list_vms_max_s": round(max(times), 3),
        "lab_up_s": round(lab_up, 1), "doctor_s": round(doctor_s, 2),
        "doctor_vms": doctor_vms, "doctor_exit": doctor.returncode,
    }))


if __name__ == "__main__":
    main()
