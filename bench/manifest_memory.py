"""Peak memory of `vmkeep ls` and `vmkeep check` on a huge image manifest (issue #24).

    uv run python bench/manifest_memory.py [--rows 4194304] [--code DIR]

Plants a manifest of ``--rows`` all-zero 8 MiB chunks (4 Mi rows claim a 32 TiB disk; the file
is ~84 KB, see ``tests/security/big_manifest.py``) in a fresh local repository, then runs
``vmkeep ls POINT``, ``vmkeep check`` and ``vmkeep restore image`` under ``ulimit -f`` of 1 GiB
(a file system that cannot hold 32 TiB) as child processes and prints each child's peak RSS
(``wait4`` ru_maxrss) and exit code as JSON.  ``--code DIR`` runs the CLI from another source
tree (e.g. ``git archive <commit> | tar -x -C DIR``) to compare before and after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4 << 20)
    parser.add_argument("--code", help="run the CLI from this source tree instead")
    args = parser.parse_args()
    # This process stays small (no vmkeep import): a child's ru_maxrss starts from its parent's
    # RSS at fork (Linux keeps the pre-exec high-water mark), so the work happens in children.
    work = Path(tempfile.mkdtemp(prefix="vmkeep-bench-manifest-"))
    try:
        env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(work / "repo"),
                   VMKEEP_STATE_DIR=str(work / "state"), PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "vmkeep.cli", "init"], env=env, check=True)
        planted = subprocess.run(
            [sys.executable, "-m", "tests.security.big_manifest", str(work / "repo"),
             str(args.rows)],
            env=env, check=True, capture_output=True, text=True, cwd=ROOT,
        ).stdout.split()
        point_id, size = planted[0], int(planted[1])
        if args.code:
            env["PYTHONPATH"] = args.code
        cli = [sys.executable, "-m", "vmkeep.cli"]
        results = {
            "rows": args.rows, "manifest_bytes": size, "code": args.code or str(ROOT),
            "import_only": _measure([*cli, "--help"], env),
            "ls": _measure([*cli, "ls", point_id[:12]], env),
            "check": _measure([*cli, "check", "--json"], env),
            "restore_image": _measure(
                [*cli, "restore", "image", point_id[:12], "--to", str(work / "out.img"),
                 "--no-prefect"], env, fsize=1 << 30),
        }
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(argv: list[str], env: dict[str, str], fsize: int | None = None) -> dict[str, object]:
    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limit, cwd=env["VMKEEP_STATE_DIR"].rsplit("/", 1)[0])
    assert proc.stdout is not None and proc.stderr is not None
    err = proc.stderr.read()
    proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return {"exit": code, "rss_mb": round(usage.ru_maxrss / 1024, 1), "last_line": last[0][:200]}


if __name__ == "__main__":
    main()
