"""Bandwidth limits on the wire: ``vmkeep --limit-upload`` against ``restic --limit-upload``.

Both tools back up the same incompressible image into a fresh repository on a real SFTP server
(OpenSSH's sshd on loopback, as the tests start it), through a metering TCP proxy that records
every byte the client sends with its arrival time.  Per run it prints: the bytes on the wire,
the transfer time (first to last byte), the average rate against the limit, and the most bytes
seen in any 250 ms window against what the limit allows there — a limiter that pauses between
large objects but sends each at line speed shows a high peak; one that paces during the
transfer stays near ``limit · 0.25 s`` (vmkeep's bucket allows one 256 KiB slice above it).

    uv run --frozen python bench/bench_rate_limit.py [--workdir bench-work] [--size-mib 32]
        [--limits 4096,16384,0] [--tools vmkeep,restic]

``--reads`` instead times ``vmkeep --limit-read L backup image`` of the image into a local
repository (the source side: the reads of the disk being backed up), from the command's own
``duration_s`` and ``bytes_read``.

``--object`` instead times one 32 MiB ``put`` in-process through ``open_backend`` (the limiter
and the SFTP backend alone, no backup around them) at each limit.

``0`` is a run without a limit.  Wall times of the whole command and CPU seconds (user + system)
are printed too; restic's repository is encrypted (always), vmkeep's is not.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers.fault_proxy import FaultProxy  # noqa: E402
from tests.servers.sshd_server import sshd  # noqa: E402

VMKEEP = [sys.executable, "-m", "vmkeep.cli"]
WINDOW_S = 0.25


class Meter(FaultProxy):
    """A TCP proxy to ``upstream`` (the tests' fault proxy, without faults) that records
    (time, bytes) of everything clients send."""

    def __init__(self, upstream: int) -> None:
        self.sent: list[tuple[float, int]] = []
        super().__init__(upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while data := src.recv(65536):
                if upload:
                    with self._lock:
                        self.sent.append((time.monotonic(), len(data)))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(src, dst)

    def take(self) -> list[tuple[float, int]]:
        with self._lock:
            got, self.sent = self.sent, []
        return got


def peak(samples: list[tuple[float, int]], window: float) -> int:
    """The most bytes that arrived within any ``window`` seconds."""
    best = total = 0
    start = 0
    for t, n in samples:
        total += n
        while samples[start][0] < t - window:
            total -= samples[start][1]
            start += 1
        best = max(best, total)
    return best


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def put_one_object(work: Path, limits: list[int]) -> int:
    """One 32 MiB object ``put`` through the throttled SFTP backend per limit, timed."""
    from vmkeep.storage.backend import open_backend

    data = os.urandom(32 << 20)
    with sshd(work / "sshd") as server:
        for limit in limits:
            os.environ["VMKEEP_LIMIT_UPLOAD"] = str(limit) if limit else ""
            backend = open_backend(server.url(f"object-{limit}"), server.options())
            backend.put("config", b"connect first")
            start = time.monotonic()
            backend.put("packs/aa/object", data)
            took = time.monotonic() - start
            print(f"limit {limit or 'none'} KiB/s: {took:.2f} s, {(32 << 10) / took:,.0f} KiB/s",
                  flush=True)
    return 0


def read_limits(work: Path, image: Path, limits: list[int]) -> int:
    """``vmkeep --limit-read L backup image`` per limit, each into a fresh local repository."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_LIMIT")}
    env["PREFECT_API_URL"] = ""
    env["VMKEEP_STATE_DIR"] = str(work / "vmkeep-state")  # a fresh installation's licence state
    print("| limit KiB/s | bytes read MiB | backup s | read KiB/s | read / limit |")
    print("|---|---|---|---|---|")
    for limit in limits:
        repo = work / f"reads-{limit}"
        subprocess.run([*VMKEEP, "init", "--repo", str(repo)], env=env, check=True,
                       capture_output=True)
        limit_args = ["--limit-read", str(limit)] if limit else []
        done = subprocess.run([*VMKEEP, *limit_args, "backup", "image", str(image), "--name",
                               "d", "--repo", str(repo), "--json"], env=env, check=True,
                              capture_output=True, text=True)
        summary = json.loads(done.stdout)
        rate = summary["bytes_read"] / summary["duration_s"] / 1024
        ratio = f"{rate / limit:.2f}" if limit else "—"
        print(f"| {limit or 'none'} | {summary['bytes_read'] / 2**20:.1f} | "
              f"{summary['duration_s']:.2f} | {rate:,.0f} | {ratio} |", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="bench-work")
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--limits", default="4096,16384,0", help="KiB/s; 0 = no limit")
    parser.add_argument("--tools", default="vmkeep,restic")
    parser.add_argument("--object", action="store_true", help="time one 32 MiB put per limit")
    parser.add_argument("--reads", action="store_true", help="time --limit-read image backups")
    args = parser.parse_args()
    work = Path(args.workdir).resolve() / "rate-limit"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image = work / "disk.img"
    image.write_bytes(os.urandom(args.size_mib << 20))
    rows = ["| tool | limit KiB/s | wire MiB | transfer s | average KiB/s | average / limit "
            "| peak in 250 ms, KiB | peak / (limit · 250 ms) | command wall s | CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    if args.object:
        return put_one_object(work, [int(x) for x in args.limits.split(",")])
    if args.reads:
        return read_limits(work, image, [int(x) for x in args.limits.split(",")])
    with sshd(work / "sshd") as server:
        meter = Meter(server.port)
        key = str(server.key_file)
        for limit in (int(x) for x in args.limits.split(",")):
            for tool in args.tools.split(","):
                sub = f"{tool}-{limit}"
                env = dict(os.environ, PREFECT_API_URL="", RESTIC_PASSWORD="bench",
                           FSSPEC_SFTP=f'{{"key_filename": "{key}", "look_for_keys": false}}')
                env = {k: v for k, v in env.items() if not k.startswith("VMKEEP_LIMIT")}
                limit_args = ["--limit-upload", str(limit)] if limit else []
                if tool == "vmkeep":
                    url = server.url(sub, meter.port)
                    subprocess.run([*VMKEEP, "init", "--repo", url], env=env, check=True,
                                   capture_output=True)
                    cmd = [*VMKEEP, *limit_args, "backup", "image", str(image), "--name", "d",
                           "--repo", url]
                else:
                    ssh = (f"ssh -i {key} -p {meter.port} -o StrictHostKeyChecking=no "
                           f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
                           f"{server.user}@127.0.0.1 -s sftp")
                    base = ["restic", "-o", f"sftp.command={ssh}", "-r",
                            f"sftp:{server.user}@127.0.0.1:{server.root}/{sub}"]
                    subprocess.run([*base, "init"], env=env, check=True, capture_output=True)
                    cmd = [*base, *limit_args, "backup", "-q", str(image)]
                meter.take()
                cpu0, t0 = cpu(), time.monotonic()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                wall, used = time.monotonic() - t0, cpu() - cpu0
                samples = meter.take()
                wire = sum(n for _, n in samples)
                span = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
                avg = wire / span / 1024 if span else 0.0
                top = peak(samples, WINDOW_S) / 1024
                ratio = f"{avg / limit:.2f}" if limit else "—"
                peak_ratio = f"{top / (limit * WINDOW_S):.2f}" if limit else "—"
                rows.append(f"| {tool} | {limit or 'none'} | {wire / 2**20:.1f} | {span:.2f} | "
                            f"{avg:,.0f} | {ratio} | {top:,.0f} | {peak_ratio} | {wall:.2f} | "
                            f"{used:.2f} |")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
