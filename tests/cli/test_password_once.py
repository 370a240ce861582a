"""A password command runs once per command: ``VMKEEP_PASSWORD_COMMAND`` may prompt (pinentry),
read a vault that audits each read, or ask for a hardware token's touch — a command that opens
the repository twice asks twice, and so does each nbdkit export a command starts (``verify fs``
checks each volume over its own).  Every command below counts its runs of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.run_cli import ROOT, VMKEEP

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")

PASSWORD = "once-only"


def test_each_command_runs_the_password_command_once(tmp_path: Path) -> None:
    counter = tmp_path / "asked"
    command = tmp_path / "password.sh"
    command.write_text(f"#!/bin/sh\necho asked >> {counter}\necho {PASSWORD}\n")
    command.chmod(0o700)
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_PASSWORD")}
    env = dict(base, PREFECT_API_URL="", VMKEEP_REPO=str(tmp_path / "repo"),
               VMKEEP_PASSWORD_COMMAND=str(command))

    def asked(*args: str) -> tuple[int, str]:
        """(times the password command ran, stdout) for ``vmkeep ARGS``, which must succeed."""
        counter.unlink(missing_ok=True)
        out = subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=env, cwd=ROOT)
        assert out.returncode == 0, (args, out.stderr)
        runs = len(counter.read_text().splitlines()) if counter.exists() else 0
        return runs, out.stdout

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "hello.txt").write_text("hello\n")
    (tree / "sub" / "data.bin").write_bytes(os.urandom(50_000))
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True)

    assert asked("init", "--encrypt")[0] == 1
    assert asked("backup", "image", str(image), "--name", "img", "--no-prefect")[0] == 1
    assert asked("backup", "files", str(tree), "--name", "files", "--no-prefect")[0] == 1
    runs, listing = asked("list", "--json")
    assert runs == 1
    points = json.loads(listing)["points"]
    img = next(p["id"] for p in points if p["name"] == "img")
    files = next(p["id"] for p in points if p["name"] == "files")
    for args in [
        ("ls", img),
        ("ls", f"{img}:disk0/sub"),
        ("ls", files),
        ("ls", f"{files}:/sub"),
        ("restore", "files", f"{img}:disk0/hello.txt", "--to", str(tmp_path / "out-image")),
        ("restore", "files", f"{files}:/sub", "--to", str(tmp_path / "out-files")),
        ("diff", files, files),
        ("find", "data.bin"),
        ("check",),
    ]:
        assert asked(*args)[0] == 1, args
    assert (tmp_path / "out-image" / "hello.txt").read_text() == "hello\n"
    if all(shutil.which(tool) for tool in ("nbdkit", "nbdfuse", "e2fsck")):
        runs, checked = asked("verify", "fs", img, "--json")
        assert runs == 1 and json.loads(checked)["ok"], checked
        # a password file readable once (bash's process substitution: /dev/fd/63) serves the
        # command and its export alike
        once = {k: v for k, v in env.items() if k != "VMKEEP_PASSWORD_COMMAND"}
        shell = 'VMKEEP_PASSWORD_FILE=<(echo "$PW") exec "$@"'
        out = subprocess.run(["bash", "-c", shell, "bash", *VMKEEP, "verify", "fs", img,
                              "--json"], capture_output=True, text=True, cwd=ROOT,
                             env=dict(once, PW=PASSWORD))
        assert out.returncode == 0 and json.loads(out.stdout)["ok"], out.stderr
        piped = subprocess.run([*VMKEEP, "verify", "fs", img, "--json"], input=PASSWORD + "\n",
                               capture_output=True, text=True, cwd=ROOT,
                               env=dict(once, VMKEEP_PASSWORD_FILE="/dev/stdin"))
        assert piped.returncode == 0 and json.loads(piped.stdout)["ok"], piped.stderr
    assert (tmp_path / "out-files" / "sub" / "data.bin").stat().st_size == 50_000


CHILD = """
import os, subprocess, sys
from vmkeep.storage.crypto import hand_over_password, password_from_env

first, again = password_from_env(), password_from_env()  # the handed-over pipe, read once
if sys.argv[1] == "parent":  # hand it on, as the instant-restore supervisor does to nbdkit
    env = dict(os.environ)
    fds = hand_over_password(env)
    out = subprocess.run([sys.executable, "-c", sys.argv[2], "child", sys.argv[2]], env=env,
                         pass_fds=fds, capture_output=True, text=True, check=True).stdout
    for fd in fds:
        os.close(fd)
    print(first, again, out.strip(), env.get("VMKEEP_PASSWORD_COMMAND"))
else:
    print(first, again, os.environ["VMKEEP_PASSWORD_FILE"].startswith("/dev/fd/"))
"""


def test_the_answer_is_handed_down_a_chain_of_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's answer reaches a child and its child through pipes (``VMKEEP_PASSWORD_FILE
    =/dev/fd/N``), each read once; the command runs once, in the first process."""
    from vmkeep.storage.crypto import hand_over_password, password_from_env

    counter = tmp_path / "asked"
    command = f"echo asked >> {counter}; echo {PASSWORD}-chain"
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMKEEP_PASSWORD_COMMAND", command)
    assert password_from_env() == password_from_env() == f"{PASSWORD}-chain"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    fds = hand_over_password(env)
    assert len(fds) == 1 and "VMKEEP_PASSWORD_COMMAND" not in env
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, "parent", CHILD], env=env,
                             pass_fds=fds, capture_output=True, text=True, cwd=ROOT)
    finally:
        for fd in fds:
            os.close(fd)
    assert out.returncode == 0, out.stderr
    word = f"{PASSWORD}-chain"
    assert out.stdout.split() == [word, word, word, word, "True", "None"]
    assert counter.read_text().splitlines() == ["asked"]
    # a password the caller gave the child itself is left alone
    own = dict(os.environ, VMKEEP_PASSWORD="another")
    assert hand_over_password(own) == [] and own["VMKEEP_PASSWORD"] == "another"


def test_copy_may_ask_the_same_way_for_two_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``copy``'s two repositories may name the same command (a prompt) for different
    passwords: each is asked once, and neither answer stands in for the other."""
    from vmkeep.storage.crypto import password_from_env

    counter = tmp_path / "asked"
    command = f"echo asked >> {counter}; echo answer-$(wc -l < {counter})"
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE", "VMKEEP_FROM_PASSWORD",
                 "VMKEEP_FROM_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMKEEP_PASSWORD_COMMAND", command)
    monkeypatch.setenv("VMKEEP_FROM_PASSWORD_COMMAND", command)
    assert password_from_env() == password_from_env() == "answer-1"
    assert password_from_env("from_") == password_from_env("from_") == "answer-2"
    assert len(counter.read_text().splitlines()) == 2


def test_an_unencrypted_repository_asks_nothing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that never needed the password (its repository is not encrypted) hands
    nothing over and runs no command: its exports would not need one either."""
    from vmkeep.storage.crypto import hand_over_password

    counter = tmp_path / "asked"
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMKEEP_PASSWORD_COMMAND", f"echo asked >> {counter}; echo never")
    env = dict(os.environ)
    assert hand_over_password(env) == [] and env == dict(os.environ)
    assert not counter.exists()
