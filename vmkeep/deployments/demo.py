"""``make demo``: vmkeep end to end on embedded defaults, as a user would run it.

1. Start Prefect's local server (so every run shows in its UI) unless ``--no-prefect``.
2. Make a disk image holding a real ext4 file system (``mke2fs -d`` from system folders plus
   incompressible data), create a local repository, back the disk up.
3. Change the guest file system (``debugfs`` writes a file, scattered blocks change), back up
   again — an incremental that still commits a full logical image.
4. Restore both restore points and verify them bit for bit; ``check --read-data``.
4½. Tape: start a virtual tape library (Debian's tgt), copy the points to tape, restore the
   first one from tape into a fresh repository and verify its image bit for bit.
5. Start the ESX lab (a vSphere simulator with real guest disks) as the vCenter, back up a Linux
   VM with CBT enabled, change its disk, back it up again (a CBT incremental), back up several
   small VMs at once under snapshot limits, restore a VM disk and verify it, sweep leftovers.

Every step is a ``vmkeep`` command printed before it runs.  State lives in ``--workdir``
(default ``./demo-work``); the Prefect server is stopped at the end unless ``--keep-server``; on
a terminal the demo first lists its Prefect runs and keeps the server up until Ctrl-C
(``--no-wait``: stop at once).

No licence is needed: the demo protects 6 workloads (the disk image, ``linux01`` and the small
lab VMs), within the community tier's 10.  It runs as a fresh installation of its own (state and
config directories inside the work dir), so a licence or usage ledger of the user's is neither
used nor changed; ``vmkeep license status`` at the end shows the tier and the count.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vmkeep.deployments import prefect_server


def sh(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> str:
    shown = " ".join(cmd).replace(sys.executable + " -m vmkeep.cli", "vmkeep")
    shown = shown.replace(sys.executable + " -m tests.support.run_cli", "vmkeep")
    print(f"$ {shown}", flush=True)
    result = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"demo step failed ({result.returncode}): {shown}")
    if not quiet and result.stdout.strip():
        print(result.stdout.rstrip())
    if result.stderr.strip():
        print(result.stderr.rstrip())
    return result.stdout


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_guest_disk(work: Path, size_mb: int) -> Path:
    """A raw disk holding ext4 with system files, random data and free (zero) space."""
    tree = work / "guest-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "data").mkdir(parents=True)
    for source in ("/usr/share/doc", "/usr/share/common-licenses", "/etc"):
        if os.path.isdir(source):
            shutil.copytree(source, tree / source.strip("/").replace("/", "_"),
                            symlinks=True, ignore_dangling_symlinks=True, dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names
                                                     if n in ("shadow", "gshadow")])
    rng = random.Random(42)
    (tree / "data" / "random.bin").write_bytes(rng.randbytes(size_mb // 8 << 20))
    disk = work / "guest-disk.img"
    disk.unlink(missing_ok=True)
    sh(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(disk), f"{size_mb}M"])
    return disk


def change_guest_disk(work: Path, disk: Path) -> None:
    note = work / "note.txt"
    note.write_text(f"changed by the vmkeep demo at {time.ctime()}\n" * 100)
    sh(["debugfs", "-w", "-R", f"write {note} demo-note.txt", str(disk)], quiet=True)
    rng = random.Random(7)
    with open(disk, "r+b") as f:  # scattered writes into the random file's blocks
        for _ in range(40):
            f.seek(rng.randrange(disk.stat().st_size // 2, disk.stat().st_size - 65536) & ~4095)
            f.write(rng.randbytes(4096))


def file_sha256(path: str) -> str:
    """SHA-256 of a disk image's content (a VMDK descriptor is followed to its flat extent)."""
    from vmkeep.disks import open_disk

    h = hashlib.sha256()
    with open_disk(path) as disk:
        disk.seek(0)
        for block in iter(lambda: disk.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vm_part(work: Path, env: dict[str, str], vmkeep: list[str]) -> None:
    """Back up lab VMs through the vSphere API: full, CBT incremental, many at once, restore."""
    import json

    env = dict(env, VMKEEP_LAB_DIR=str(work / "lab"))
    lab = json.loads(sh([*vmkeep, "lab", "up", "--json"], env, quiet=True))
    print(f"ESX lab (vCenter) at {lab['url']}: {', '.join(v['name'] for v in lab['vms'])}")
    env.update(VMKEEP_VC_USER=lab["user"], VMKEEP_VC_PASSWORD=lab["password"])
    conn = ["--vcenter", lab["url"], "--cafile", lab["cafile"]]
    linux = next(v for v in lab["vms"] if v["name"] == "linux01")
    sh([*vmkeep, "backup", "vm", "linux01", *conn], env)
    sh([*vmkeep, "lab", "write", "linux01", "--percent", "2", "--seed", "7"], env, quiet=True)
    summary = json.loads(sh([*vmkeep, "backup", "vm", "linux01", *conn, "--json"], env,
                            quiet=True))
    for disk in summary["disks"]:
        print(f"  incremental: disk {disk['key']} {disk['mode']}, read {disk['bytes_read']:,} "
              f"of {disk['size']:,} bytes")
    expected = file_sha256(linux["disks"][0]["local_path"])
    out = work / "linux01-disk0.raw"
    sh([*vmkeep, "restore", "image", summary["id"][:12], "--disk", "0", "--to", str(out)], env)
    if sha256(out) != expected:
        raise SystemExit("restored VM disk differs from the VM's disk at backup time")
    print("verified: the restored VM disk is bit-identical to the disk at snapshot time")
    out.unlink()
    sh([*vmkeep, "backup", "vm", "small*", *conn, "--parallel", "3"], env)
    sh([*vmkeep, "sweep", *conn, "--older-than", "0"], env)
    sh([*vmkeep, "list"], env)
    sh([*vmkeep, "lab", "down"], env, quiet=True)


def tape_part(work: Path, env: dict[str, str], vmkeep: list[str], point: str, digest: str) -> None:
    """Copy the restore points to the lab's virtual tape library (tgt), bring one back into a
    fresh repository from tape and verify the restored image bit for bit."""
    import json

    from vmkeep.lab import vtl

    if vtl.missing_tools():
        print(f"tape part skipped: {', '.join(vtl.missing_tools())} missing (Debian package tgt)")
        return
    # The community tier has no autoloader slots: the demo installs the development licence,
    # which only the source tree's test launcher trusts (an installed vmkeep trusts the vendor
    # key alone), so the tape commands run through it.
    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "support" / "run_cli.py").exists():
        print("tape part skipped: needs the source tree's development licence")
        return
    vmkeep = [sys.executable, "-m", "tests.support.run_cli"]
    env = dict(env, VMKEEP_TAPE_DIR=str(work / "tape"), VMKEEP_TAPE_LIBRARY="lab",
               VMKEEP_LICENSE=str(root / "tests" / "licensing" / "keys" / "dev_licence.json"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])))
    shutil.rmtree(work / "tape", ignore_errors=True)
    shutil.rmtree(work / "vtl", ignore_errors=True)
    library = vtl.start(work / "vtl", size_mb=1024)
    try:
        print(f"virtual tape library (tgt) at {library.url}: {library.slots} slots, "
              f"{library.drives} drives")
        sh([*vmkeep, "tape", "library", "add", "lab", "--url", library.url, "--changer-lun",
            str(library.changer_lun), "--drive-lun", "1", "--drive-lun", "2"], env)
        sh([*vmkeep, "tape", "pool", "add", "daily", "--retention-days", "7"], env)
        sh([*vmkeep, "tape", "copy", "--all-new", "--pool", "daily"], env)
        sh([*vmkeep, "tape", "catalog"], env)
        restored = work / "tape-restored-repo"
        shutil.rmtree(restored, ignore_errors=True)
        sh([*vmkeep, "tape", "restore", point[:12], "--to-repo", str(restored)], env)
        out = work / "restored-from-tape.img"
        sh([*vmkeep, "restore", "image", point[:12], "--to", str(out), "--repo", str(restored)],
           env)
        if sha256(out) != digest:
            raise SystemExit("the image restored from tape is not bit-identical")
        print("verified: the image brought back from tape is bit-identical")
        out.unlink()
        inv = json.loads(sh([*vmkeep, "tape", "inventory", "--json"], env, quiet=True))
        used = [e["barcode"] for e in inv["elements"] if e.get("media", {}).get("files")]
        print(f"cartridges written: {', '.join(used)}")
    finally:
        library.stop()


def interactive(args: argparse.Namespace) -> bool:
    """Keep the server up for the user only on a terminal (CI and pipes stop as before)."""
    return not args.no_wait and sys.stdin.isatty() and sys.stdout.isatty()


def show_runs_and_wait(server: prefect_server.PrefectServer) -> None:
    """Print the flow runs the demo made and where to see them; wait for Ctrl-C."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        runs = client.read_flow_runs(limit=200)
    print(f"\nthe demo's {len(runs)} Prefect runs:")
    for run in sorted(runs, key=lambda r: r.start_time or r.created or 0):
        print(f"  {run.state_name or '?':<10} {run.name}")
    print(f"\nopen {server.ui_url}/runs — Ctrl-C to stop the Prefect server", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping the Prefect server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("demo-work"))
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--no-prefect", action="store_true", help="run flows directly")
    parser.add_argument("--keep-server", action="store_true",
                        help="leave the Prefect server running after the demo")
    parser.add_argument("--no-wait", action="store_true",
                        help="on a terminal too: stop the Prefect server at the end at once")
    parser.add_argument("--no-lab", action="store_true", help="skip the VMware part")
    parser.add_argument("--no-tape", action="store_true", help="skip the tape part")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    for fresh in (repo, work / "state", work / "config"):
        shutil.rmtree(fresh, ignore_errors=True)
    env = dict(os.environ, VMKEEP_REPO=str(repo), VMKEEP_STATE_DIR=str(work / "state"),
               VMKEEP_CONFIG_DIR=str(work / "config"), **prefect_server.quiet_prefect_env())
    env.pop("VMKEEP_LICENSE", None)
    server = None
    if not args.no_prefect:
        print("starting Prefect's local server …", flush=True)
        server = prefect_server.start(work / "prefect")
        env["PREFECT_API_URL"] = server.api_url
        print(f"Prefect UI: {server.ui_url}")
    else:
        env["PREFECT_API_URL"] = ""
    vmkeep = [sys.executable, "-m", "vmkeep.cli"]
    try:
        disk = make_guest_disk(work, args.size_mb)
        first_hash = sha256(disk)
        sh([*vmkeep, "init"], env)
        sh([*vmkeep, "backup", "image", str(disk), "--name", "demo-disk"], env)
        change_guest_disk(work, disk)
        second_hash = sha256(disk)
        sh([*vmkeep, "backup", "image", str(disk), "--name", "demo-disk"], env)
        sh([*vmkeep, "list"], env)
        points = __import__("json").loads(sh([*vmkeep, "list", "--json"], env, quiet=True))
        first_id = points["points"][0]["id"]
        for ref, expected in ((first_id[:8], first_hash), ("demo-disk@latest", second_hash)):
            out = work / f"restored-{ref.replace('@', '-')}.img"
            sh([*vmkeep, "restore", "image", ref, "--to", str(out)], env)
            if sha256(out) != expected:
                raise SystemExit(f"restore of {ref} is not bit-identical")
            print(f"verified: {out.name} is bit-identical to the disk at backup time")
            out.unlink()
        sh([*vmkeep, "check", "--read-data"], env)
        if not args.no_tape:
            tape_part(work, env, vmkeep, first_id, first_hash)
        if not args.no_lab:
            vm_part(work, env, vmkeep)
            sh([*vmkeep, "check", "--read-data"], env)
        sh([*vmkeep, "license", "status"], env)
        print("demo finished: image and VM backups, incrementals, restores and check all good")
        if server is not None and not args.keep_server and interactive(args):
            show_runs_and_wait(server)
    finally:
        if server is not None and not args.keep_server:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
