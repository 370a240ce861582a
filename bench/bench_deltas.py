"""Reading a snapshot delta chain with 512-byte grains (ESXi's COWD/vmfsSparse redo logs).

Builds, in ``--workdir``, a 1 GiB disk as ESXi leaves it on VMFS5 after two snapshots::

    vm.vmdk          + vm-flat.vmdk            base: 1 GiB, 10 % random data (sparse file)
    vm-000001.vmdk   + vm-000001-delta.vmdk    COWD, 512-byte grains: 25 % rewritten in random
                                               extents of 16 KiB–1 MiB (like `lab write`)
    vm-000002.vmdk   + vm-000002-delta.vmdk    COWD, 512-byte grains: 1 % rewritten in random
                                               4 KiB writes (scattered grains)

then reads the top of the chain end to end in 4 MiB ``pread`` calls with vmkeep's reader
(``open_disk(..., "direct")``), and with ``qemu-img convert -f vmdk -O raw`` as the independent
reference; both outputs are compared byte for byte (by SHA-256).  ``--old REV`` also times
``vmkeep/disks/vmdk/deltas.py`` (``vmkeep/vsphere/deltas.py`` before it moved) as of git
revision REV (e.g. the per-grain-loop version).

    uv run --frozen python bench/bench_deltas.py --workdir /tmp/bench-deltas [--old REV]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

GiB = 1 << 30
S = 512
CAP = GiB
CHUNK = 4 << 20


def descriptor(kind: str, extent: str, cid: str, parent: str | None = None,
               parent_cid: str = "ffffffff") -> bytes:
    create = {"VMFS": "vmfs", "VMFSSPARSE": "vmfsSparse"}[kind]
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid}", f"parentCID={parent_cid}",
             f'createType="{create}"']
    if parent:
        lines.append(f'parentFileNameHint="{parent}"')
    lines += ["# Extent description", f'RW {CAP // S} {kind} "{extent}"', ""]
    return "\n".join(lines).encode()


def extents(rng: random.Random, share: float, lo: int, hi: int) -> list[tuple[int, int]]:
    out, total = [], int(CAP * share)
    while total > 0:
        n = min(rng.randrange(lo, hi + 1, 4096), total)
        n = max(4096, n // 4096 * 4096)
        out.append((rng.randrange(0, (CAP - n) // 4096) * 4096, n))
        total -= n
    return out


def write_cowd(path: Path, writes: list[tuple[int, int]], rng: random.Random) -> None:
    """A COWD file with 1-sector grains holding ``writes``, grains allocated in write order."""
    cap_secs = CAP // S
    n_gd = -(-cap_secs // 4096)
    tables: dict[int, list[int]] = {}
    order: list[int] = []  # grain numbers in allocation order
    seen: set[int] = set()
    for off, n in writes:
        for g in range(off // S, (off + n) // S):
            if g not in seen:
                seen.add(g)
                order.append(g)
    gd_secs = -(-n_gd * 4 // S)
    free = 4 + gd_secs
    gd = [0] * n_gd
    for g in sorted(seen):
        t = g // 4096
        if t not in tables:
            tables[t] = [0] * 4096
            gd[t] = free
            free += 4096 * 4 // S
    data_start = free
    for i, g in enumerate(order):
        tables[g // 4096][g % 4096] = data_start + i
    free = data_start + len(order)
    with open(path, "wb") as f:
        head = struct.pack("<4sIIIIIII", b"COWD", 1, 3, cap_secs, 1, 4, n_gd, free)
        f.write(head.ljust(4 * S, b"\0"))
        f.write(struct.pack(f"<{n_gd}I", *gd))
        for t, table in tables.items():
            f.seek(gd[t] * S)
            f.write(struct.pack("<4096I", *table))
        f.seek(data_start * S)
        f.write(rng.randbytes(len(order) * S))


def build(work: Path) -> None:
    vm = work / "vm"
    if (vm / "vm-000002.vmdk").exists():
        return
    vm.mkdir(parents=True, exist_ok=True)
    rng = random.Random(14)
    (vm / "vm.vmdk").write_bytes(descriptor("VMFS", "vm-flat.vmdk", "0000000a"))
    with open(vm / "vm-flat.vmdk", "wb") as f:
        f.truncate(CAP)
        for off, n in extents(rng, 0.10, 1 << 20, 8 << 20):
            f.seek(off)
            f.write(rng.randbytes(n))
    (vm / "vm-000001.vmdk").write_bytes(
        descriptor("VMFSSPARSE", "vm-000001-delta.vmdk", "0000000b", "vm.vmdk", "0000000a"))
    write_cowd(vm / "vm-000001-delta.vmdk", extents(rng, 0.25, 16 << 10, 1 << 20), rng)
    (vm / "vm-000002.vmdk").write_bytes(
        descriptor("VMFSSPARSE", "vm-000002-delta.vmdk", "0000000c", "vm-000001.vmdk",
                   "0000000b"))
    write_cowd(vm / "vm-000002-delta.vmdk", extents(rng, 0.01, 4096, 4096), rng)


def read_all(open_chain_fn: object, work: Path) -> tuple[float, float, str]:
    from vmkeep.vsphere.transports import LocalSource

    def open_file(rel: str) -> tuple[LocalSource, int]:
        p = work / rel
        return LocalSource(str(p)), p.stat().st_size

    def open_flat(d: object) -> LocalSource:
        return LocalSource(str(work / "vm" / "vm-flat.vmdk"))

    head = (work / "vm" / "vm-000002.vmdk").read_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    chain = open_chain_fn("[ds] vm/vm-000002.vmdk", "vm/vm-000002.vmdk", head, CAP,  # type: ignore[operator]
                          open_file, open_flat)
    h = hashlib.sha256()
    for off in range(0, CAP, CHUNK):
        h.update(chain.pread(off, CHUNK))
    chain.close()
    return time.perf_counter() - t0, time.process_time() - c0, h.hexdigest()


def old_module(rev: str) -> object:
    for where in ("vmkeep/disks/vmdk/deltas.py", "vmkeep/vsphere/deltas.py"):
        shown = subprocess.run(["git", "show", f"{rev}:{where}"], capture_output=True, text=True)
        if shown.returncode == 0:
            break
    shown.check_returncode()
    src = shown.stdout
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"deltas_{rev.replace('/', '_')}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("deltas_old", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--old", help="also time deltas.py as of this git revision")
    args = ap.parse_args()
    work = args.workdir
    t0 = time.perf_counter()
    build(work)
    print(f"chain built in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{p.name} {p.stat().st_blocks * 512 >> 20} MiB"
                      for p in sorted((work / "vm").glob("*-delta.vmdk"))))
    from vmkeep.disks.vmdk.deltas import open_chain

    wall, cpu, digest = read_all(open_chain, work)
    print(f"vmkeep  : {wall:6.2f} s wall, {cpu:6.2f} s CPU, {CAP / wall / 1e6:6.0f} MB/s")
    if args.old:
        mod = old_module(args.old)
        w2, c2, d2 = read_all(mod.open_chain, work)  # type: ignore[attr-defined]
        print(f"old {args.old[:7]}: {w2:6.2f} s wall, {c2:6.2f} s CPU, {CAP / w2 / 1e6:6.0f} MB/s"
              f", same bytes: {d2 == digest}")
    out = work / "qemu.raw"
    t0 = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw",
                    str(work / "vm" / "vm-000002.vmdk"), str(out)], check=True)
    qw = time.perf_counter() - t0
    h = hashlib.sha256()
    with open(out, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    out.unlink()
    same = h.hexdigest() == digest
    print(f"qemu-img: {qw:6.2f} s wall (convert to a raw file), same bytes: {same}")
    if h.hexdigest() != digest:
        sys.exit("vmkeep and qemu-img disagree")


if __name__ == "__main__":
    main()
