"""Build the lab's Go program (``vmkeep/lab/esxsim``) against Debian's govmomi.

Contract: :func:`ensure_binary` returns the path of an executable built from the current Go
sources; it rebuilds only when the sources' hash changes (``esxsim-<hash>`` in the build dir).
It needs ``go`` and ``/usr/share/gocode/src/github.com/vmware/govmomi/simulator`` (Debian
packages ``golang-go`` and ``golang-github-vmware-govmomi-dev``); otherwise it raises
:class:`~vmkeep.lab.errors.LabUnavailable` with one line saying what to install.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from vmkeep.lab.errors import LabUnavailable
from vmkeep.lab.paths import SOURCE_DIR, build_dir

GOCODE = Path("/usr/share/gocode")
GOVMOMI = GOCODE / "src/github.com/vmware/govmomi/simulator"
INSTALL_HINT = (
    "install Go and vcsim's sources: apt-get install golang-go golang-github-vmware-govmomi-dev"
)


def find_go() -> str | None:
    """Path of the ``go`` tool, or None."""
    go = shutil.which("go")
    if go:
        return go
    for cand in sorted(Path("/usr/lib").glob("go-*/bin/go"), reverse=True):
        if cand.exists():
            return str(cand)
    return None


def missing_prerequisites() -> str | None:
    """One line naming what is missing to build the lab, or None when it can be built."""
    if find_go() is None:
        return f"`go` not found; {INSTALL_HINT}"
    if not GOVMOMI.is_dir():
        return f"{GOVMOMI} not found; {INSTALL_HINT}"
    return None


def source_hash() -> str:
    """Hash of the Go sources (names and contents)."""
    h = hashlib.sha256()
    for p in sorted(SOURCE_DIR.glob("*.go")):
        if p.name.endswith("_test.go"):
            continue
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_binary() -> Path:
    """Return the built lab binary, building it first when the sources changed."""
    why = missing_prerequisites()
    if why:
        raise LabUnavailable(why)
    out_dir = build_dir()
    binary = out_dir / f"esxsim-{source_hash()}"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions build once
        if binary.exists():
            return binary
        return _build(out_dir, binary)


def _build(out_dir: Path, binary: Path) -> Path:
    gopath = out_dir / "gopath"
    pkg = gopath / "src" / "vmkeep" / "esxsim"
    if pkg.exists() or pkg.is_symlink():
        if pkg.is_symlink() or pkg.is_file():
            pkg.unlink()
        else:
            shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for src in SOURCE_DIR.glob("*.go"):
        shutil.copy2(src, pkg / src.name)
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{gopath}:{GOCODE}",
        GOCACHE=str(out_dir / "gocache"),
        GOFLAGS="",
        CGO_ENABLED="0",
    )
    tmp = binary.with_suffix(".tmp")
    proc = subprocess.run(
        [find_go() or "go", "build", "-o", str(tmp), "."],
        cwd=pkg,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LabUnavailable(f"go build failed: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp, binary)
    for old in out_dir.glob("esxsim-*"):
        if old != binary and old.is_file():
            old.unlink(missing_ok=True)
    return binary
