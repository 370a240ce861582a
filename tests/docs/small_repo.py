"""A small real repository for documentation tests: an ext4 image point and a file point.

Built with the ``vmkeep`` command itself (through the test launcher, which lowers scrypt's cost),
plain or encrypted.  Used by the format-spec and ``--json`` tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.missing import missing
from tests.support.run_cli import VMKEEP, cli_env

PASSWORD = "correct horse"


def vmkeep(*args: str, repo: Path, state: Path, encrypted: bool = False) -> dict | list | None:
    """Run ``vmkeep ARGS --json`` style commands; returns parsed stdout JSON (or None)."""
    env = cli_env(VMKEEP_REPO=str(repo), VMKEEP_STATE_DIR=str(state), PREFECT_API_URL="")
    if encrypted:
        env["VMKEEP_PASSWORD"] = PASSWORD
    done = subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"vmkeep {' '.join(args)}: {done.stderr}"
    out = done.stdout.strip()
    return json.loads(out) if out.startswith(("{", "[")) else None


@dataclass
class SmallRepo:
    root: Path
    state: Path
    encrypted: bool
    image: Path
    source: Path
    points: dict[str, str] = field(default_factory=dict)  # name → id

    def run(self, *args: str) -> dict | list | None:
        return vmkeep(*args, repo=self.root, state=self.state, encrypted=self.encrypted)


def make_source(where: Path) -> Path:
    src = where / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello vmkeep\n" * 1000)
    (src / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(300_000) + bytes(400_000))
    os.link(src / "a.txt", src / "sub" / "hard")
    os.symlink("a.txt", src / "link")
    return src


def make_image(where: Path, src: Path) -> Path:
    """A 4 MiB ext4 image holding ``src`` (so catalogs have entries), random data after it."""
    if shutil.which("mkfs.ext4") is None:
        missing("mkfs.ext4 (e2fsprogs) is not installed")
    image = where / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(image)], check=True)
    return image


def build(where: Path, *, encrypted: bool) -> SmallRepo:
    where.mkdir(parents=True, exist_ok=True)
    src = make_source(where)
    repo = SmallRepo(where / "repo", where / "state", encrypted, make_image(where, src), src)
    repo.run("init", "--chunk-size", "64", *(["--encrypt"] if encrypted else []))
    for name, args in (
        ("img", ("backup", "image", str(repo.image))),
        ("files", ("backup", "files", str(src))),
    ):
        summary = repo.run(*args, "--name", name, "--json")
        assert isinstance(summary, dict)
        repo.points[name] = summary["id"]
    return repo


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
