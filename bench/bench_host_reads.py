"""Read the lab's linux01 system disk (256 MiB) under a snapshot twice per path: from the ESXi
host running the VM (a service ticket per 4 MiB request, the host's certificate) and through
vCenter's /folder.  Starts its own strict lab in a temporary state dir.

    uv run --frozen python bench/bench_host_reads.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from vmkeep.lab import runner
from vmkeep.vsphere import cbt, hosts, inventory, snapshots, transports
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "lab"
        info = runner.up(n_small=1, state=state)
        try:
            creds = Credentials(info.user, info.password)
            with connect(info.url, creds, TLSOptions(cafile=info.cafile)) as s:
                vm = next(v for v in inventory.list_vms(s) if v.name == "linux01")
                with snapshots.backup_snapshot(s, vm.ref, "bench", quiesce=False) as snap:
                    disk = cbt.snapshot_disks(s, snap.ref)[2000]
                    paths = (("host + ticket", hosts.host_endpoint(s, vm.host)), ("vCenter", None))
                    for label, host in paths:
                        for _ in range(2):
                            t = time.monotonic()
                            with transports.open_disk(s, disk, "https", datacenter=vm.datacenter,
                                                      host=host) as r:
                                n = sum(len(d) for _, d in r.read_extents([(0, disk.capacity)]))
                            dt = time.monotonic() - t
                            print(f"{label}: {n >> 20} MiB in {dt:.2f} s = "
                                  f"{n / dt / (1 << 20):.0f} MiB/s")
        finally:
            runner.down(state)


if __name__ == "__main__":
    main()
