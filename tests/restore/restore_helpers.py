"""Helpers for the restore tests: run the CLI in direct mode, hash trees."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]


def vmkeep(
    *args: str, repo: Path | str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``vmkeep ARGS`` in a subprocess without a Prefect API (direct mode)."""
    full_env = dict(os.environ, PREFECT_API_URL="", **env)
    if repo is not None:
        full_env["VMKEEP_REPO"] = str(repo)
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=full_env)


def run_cli(*args: str, repo: Path | str | None = None) -> tuple[int, str, str]:
    """Run ``vmkeep ARGS`` in this process (direct mode): (exit code, stdout, stderr).  Saves the
    interpreter start-up of a subprocess; error handling is the same ``main()``.  The process's
    environment and argv are restored afterwards."""
    from vmkeep.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    argv = ["vmkeep", *args] + (["--repo", str(repo)] if repo is not None else [])
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ["PREFECT_API_URL"] = ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = argv
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return code, out.getvalue(), err.getvalue()


def vmkeep_json(*args: str, repo: Path | str | None = None, ok: tuple[int, ...] = (0,)) -> Any:
    """``vmkeep ARGS --json`` in this process; the parsed JSON object."""
    code, out, err = run_cli(*args, "--json", repo=repo)
    assert code in ok, (code, err)
    return json.loads(out)


def tree_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of the regular files under ``root`` (links not followed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
