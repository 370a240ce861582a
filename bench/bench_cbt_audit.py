"""CBT incremental with the CBT truth audit on: bytes read vs a full read, and the audit's cost.

    uv run --frozen python bench/bench_cbt_audit.py [--workdir bench-work/cbt] [--rounds 3]

On the ESX lab's largest disk (``linux01`` disk 0, 256 MiB thin), in a repository with the
default 1 MiB chunks and default options (CBT enabled by vmkeep, audit 0.5 % + neighbours, capped
at 5 %): a full backup, then ``rounds`` times "write ~1 % of the disk at random places, back up".
Each incremental after the first has the previous run's changed areas, so its audit samples
their neighbours too (the steady state).  Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/cbt"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(
        VMKEEP_LICENSE_PUBKEY=str(ROOT / "tests/licensing/keys/dev_public.pem"),
        VMKEEP_LICENSE=str(ROOT / "tests/licensing/keys/dev_licence.json"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    os.environ.pop("PREFECT_API_URL", None)
    from vmkeep.flows.backup_vm import backup_vm
    from vmkeep.flows.run import run_flow
    from vmkeep.lab import runner
    from vmkeep.storage.repository import Repository

    lab = runner.up(n_small=0, port=0, state=work / "lab")
    os.environ.update(VMKEEP_VC_USER=lab.user, VMKEEP_VC_PASSWORD=lab.password)
    conn = {"vcenter": lab.url, "cafile": lab.cafile}
    client = lab.client()
    repo = work / "repo"
    Repository.init(str(repo))
    rows = []
    try:
        full = run_flow(backup_vm, False, repo=str(repo), vm="linux01", **conn)
        d0 = full["disks"][0]
        size = d0["size"]
        print(
            f"full: disk 0 {size / MiB:.0f} MiB, read {d0['bytes_read'] / MiB:.1f} MiB "
            f"({d0['reason']})",
            file=sys.stderr,
        )
        for i in range(args.rounds):
            written = client.write("linux01", 1, disk=0, seed=100 + i)
            s = run_flow(backup_vm, False, repo=str(repo), vm="linux01", **conn)
            d = s["disks"][0]
            audit = d["cbt_audit"] or {}
            assert d["mode"] == "cbt", d
            audited = int(audit.get("bytes_audited", 0))
            rows.append(
                (
                    i + 1,
                    sum(n for _, n in written),
                    d["bytes_read"],
                    audited,
                    audit.get("chunks_sampled", 0),
                    audit.get("mismatches", 0),
                    float(audit.get("duration_s", 0.0)),
                    d["duration_s"],
                )
            )
    finally:
        runner.down(work / "lab")
    print(f"\nlinux01 disk 0: {size / MiB:.0f} MiB, 1 MiB chunks; full read = whole disk\n")
    print(
        "| incremental | written MiB | CBT read MiB | audit MiB (chunks) | mismatches "
        "| read incl. audit / full | audit / full | audit s | disk backup s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, wrote, read, audited, chunks, bad, audit_s, disk_s in rows:
        print(
            f"| {n} | {wrote / MiB:.2f} | {read / MiB:.1f} | {audited / MiB:.1f} ({chunks}) "
            f"| {bad} | {(read + audited) / size:.3f} | {audited / size:.3f} | {audit_s:.3f} "
            f"| {disk_s:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
