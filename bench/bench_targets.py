"""Target benchmark: the same image backup and restore into local, sftp://, smb:// and s3://
repositories, with the servers on loopback — OpenSSH's sshd, Samba's smbd, moto's S3 server,
started by the test suite's server plugins (tests/servers) used as plain context managers.

    uv run python bench/bench_targets.py [--workdir bench-work/targets] [--size-gib 1] \
        [--targets local,sftp,smb,s3] [--rounds N]

The image is bench_image's (a real ext4 from ``mke2fs -d`` with system files, random and zero
regions).  Every target gets a fresh repository, one full backup and one restore through the CLI
(credentials the way a user gives them: fsspec's ``FSSPEC_<PROTOCOL>`` environment, never argv);
the restored image is compared with the source byte for byte outside the timing.  Printed: wall
time, MB/s of the image size, the ratio to local, the CLI's peak RSS and CPU seconds, and the CPU
seconds of the server's processes (on loopback the server shares the machine's cores with the
client).  With ``--rounds N`` the targets take turns N times and the table shows medians.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_image import build_image, run_step

from tests.servers.s3_server import moto
from tests.servers.smbd_server import smbd
from tests.servers.sshd_server import sshd

TARGETS = ("local", "sftp", "smb", "s3")


def server_cpu(pid: int) -> float:
    """CPU seconds of a server process and all its children, live and reaped."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:4])  # user, system, children_user, children_system
        for child in proc.children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.NoSuchProcess:
        return 0.0


@contextmanager
def target(kind: str, work: Path) -> Iterator[tuple[str, dict[str, str], int | None]]:
    """(repository URL, extra environment, server pid) of a fresh repository on ``kind``."""
    if kind == "local":
        repo = work / "repo-local"
        shutil.rmtree(repo, ignore_errors=True)
        yield str(repo), {}, None
        shutil.rmtree(repo, ignore_errors=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"srv-{kind}-", dir=work))
    starter = {"sftp": sshd, "smb": smbd, "s3": moto}[kind]
    with ExitStack() as stack:
        server: Any = stack.enter_context(starter(tmp))
        pid = find_pid([str(tmp)] if kind != "s3" else ["moto_server", str(server.port)])
        env = {f"FSSPEC_{kind.upper()}": json.dumps(server.options())}
        yield server.url("repo"), env, pid
    shutil.rmtree(tmp, ignore_errors=True)


def find_pid(needles: list[str]) -> int | None:
    """The (first) server process whose command line holds all of ``needles``."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or ())
        if all(n in line for n in needles):
            return int(proc.info["pid"])
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/targets"))
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    # a SIGTERM unwinds the with-blocks, so the servers are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print("building the disk image …", flush=True)
    image = build_image(work, args.size_gib)
    size = image.stat().st_size
    subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm cache
    vmkeep = [sys.executable, "-m", "vmkeep.cli"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC_")}
    base_env["PREFECT_API_URL"] = ""
    base_env["VMKEEP_STATE_DIR"] = str(work / "vmkeep-state")  # a fresh installation
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for kind in args.targets.split(","):
            print(f"{kind} (round {rnd + 1}/{args.rounds}):", flush=True)
            with target(kind, work) as (url, extra, pid):
                env = dict(base_env, VMKEEP_REPO=url, **extra)
                subprocess.run([*vmkeep, "init"], env=env, check=True, capture_output=True)
                restored = work / "restored.img"
                steps = (
                    ("backup", [*vmkeep, "backup", "image", str(image), "--name", "d"]),
                    ("restore", [*vmkeep, "restore", "image", "d@latest", "--to", str(restored)]),
                )
                for step, cmd in steps:
                    load = float(Path("/proc/loadavg").read_text().split()[0])
                    before = server_cpu(pid) if pid else 0.0
                    run = run_step(kind, step, cmd, size, env)
                    time.sleep(0.5)  # the server's per-connection processes exit and are reaped
                    rows.setdefault((kind, step), []).append(
                        {
                            "seconds": run.seconds,
                            "rss": run.peak_rss_mb,
                            "cpu": float(getattr(run, "cpu_s", float("nan"))),
                            "server_cpu": (server_cpu(pid) - before) if pid else 0.0,
                            "load": load,
                        }
                    )
                if not filecmp.cmp(image, restored, shallow=False):
                    raise SystemExit(f"{kind}: the restored image differs from the source")
                restored.unlink()
    report(rows, size, args)
    return 0


def report(rows: dict[tuple[str, str], list[dict[str, float]]], size: int, args: Any) -> None:
    def med(kind: str, step: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[(kind, step)])

    kinds = list(dict.fromkeys(k for k, _ in rows))
    print(f"\n{size / 2**30:.0f} GiB image, median of {args.rounds} round(s)\n")
    print(
        "| target | step | wall s | MB/s | × local | peak RSS MB | client CPU s | server CPU s "
        "| load |\n|---|---|---|---|---|---|---|---|---|"
    )
    for step in ("backup", "restore"):
        for kind in kinds:
            secs = med(kind, step, "seconds")
            ratio = med("local", step, "seconds") / secs if ("local", step) in rows else None
            print(
                f"| {kind} | {step} | {secs:.1f} | {size / secs / 1e6:.0f} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {med(kind, step, 'rss'):.0f} | "
                f"{med(kind, step, 'cpu'):.1f} | {med(kind, step, 'server_cpu'):.1f} | "
                f"{med(kind, step, 'load'):.2f} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
