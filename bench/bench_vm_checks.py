"""What a VM backup's pre-snapshot reads cost on the ESX lab: the VM's vSphere tags
(``tagging.tags_of_vm``: vAPI login, attached tags, each tag and category, logout — and for a
many-VM run, every VM's at once: ``tagging.tags_of_vms``) and storage
latency control (``datastore_latency.wait_while_busy`` on a calm datastore: the datastores'
``summary.url`` and the host's realtime latency counters).  In-process against the lab on
loopback, linux01 (tag ``env:prod``); the first latency call of a process also reads the
endpoint's counter table (cached afterwards).  Prints a Markdown table for docs/performance.md.

    uv run python bench/bench_vm_checks.py [--workdir bench-work/vm-checks] [--rounds 20]
"""

from __future__ import annotations

import time

from _lab import fresh_workdir, lab_args, lab_up

VM = "linux01"


def main() -> None:
    args = lab_args("vm-checks").parse_args()
    work = fresh_workdir(args.workdir)
    with lab_up(work) as (lab, _conn):
        from vmkeep.vsphere import datastore_latency, datastore_space, inventory, tagging
        from vmkeep.vsphere.connection import connect
        from vmkeep.vsphere.credentials import Credentials
        from vmkeep.vsphere.tls import TLSOptions

        session = connect(lab.url, Credentials(lab.user, lab.password),
                          TLSOptions(cafile=lab.cafile))
        try:
            every = inventory.list_vms(session)
            vm = next(v for v in every if v.name == VM)
            stores = datastore_space.snapshot_datastores(vm)
            policy = datastore_latency.LatencyPolicy()
            start = time.perf_counter()
            datastore_latency.wait_while_busy(session, vm, stores, policy)
            first = time.perf_counter() - start
            rows = [("latency control, first call of the process", first)]
            for label, call in (
                ("latency control, per backup afterwards",
                 lambda: datastore_latency.wait_while_busy(session, vm, stores, policy)),
                ("vSphere tags read", lambda: tagging.tags_of_vm(session, vm.moid)),
                (f"vSphere tags of all {len(every)} VMs, one batched read (backup vms)",
                 lambda: tagging.tags_of_vms(session, [v.moid for v in every])),
                (f"vSphere tags of all {len(every)} VMs, one read per VM (before)",
                 lambda: [tagging.tags_of_vm(session, v.moid) for v in every]),
            ):
                call()
                start = time.perf_counter()
                for _ in range(args.rounds):
                    call()
                rows.append((label, (time.perf_counter() - start) / args.rounds))
        finally:
            session.close()
    print(f"| {VM}, {args.rounds} rounds | ms |")
    print("|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1000:.1f} |")


if __name__ == "__main__":
    main()
