"""NBD exports of restore points (nbdkit) and file-system verification through them.

Real parts only: nbdkit with vmkeep's Python plugin, libnbd's nbdinfo/nbdcopy/nbdfuse, qemu-img
as an independent reader, and the file systems' own checkers on disks made by the mkfs tools
(the session's ``backed`` repository, see conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import VMKEEP, vmkeep, vmkeep_json

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdkit", "nbdinfo", "nbdcopy", "nbdfuse")),
    reason="nbdkit / libnbd-bin missing (see .ci/apt-packages)",
)


def _export(backed, point: str, *extra: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(backed.repo))
    return subprocess.Popen(
        [*VMKEEP, "export", point, "--nbd", "--json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _started(proc: subprocess.Popen[str]) -> dict:  # type: ignore[type-arg]
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return json.loads(line)


def test_disk_export_reads_as_the_same_disk(backed, tmp_path: Path) -> None:
    from vmkeep.browse.nbd import NbdExport

    with NbdExport(str(backed.repo), backed.points["gpt"], 0) as export:
        # --no-content: without file(1) installed, nbdinfo 1.14 prints stray bytes as "content"
        info = subprocess.run(
            ["nbdinfo", "--json", "--no-content", export.uri], capture_output=True, text=True
        )
        assert info.returncode == 0, info.stderr
        meta = json.loads(info.stdout)["exports"][0]
        assert meta["export-size"] == backed.images["gpt"].stat().st_size
        assert meta["is_read_only"] is True
        same = subprocess.run(
            [
                "qemu-img",
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                str(backed.images["gpt"]),
                export.uri,
            ],
            capture_output=True,
            text=True,
        )
        assert same.returncode == 0, same.stdout + same.stderr
        copy = tmp_path / "copy.raw"
        subprocess.run(["nbdcopy", export.uri, str(copy)], check=True)
        assert copy.read_bytes() == backed.images["gpt"].read_bytes()
        mapped = subprocess.run(
            ["nbdinfo", "--map", "--json", export.uri], capture_output=True, text=True, check=True
        )
        kinds = {e["type"] for e in json.loads(mapped.stdout)}
        assert kinds == {0, 3}, "never-written chunks are reported as zero holes"


def test_volume_export_serves_that_volume(backed) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.browse.nbd import NbdExport

    raw = backed.images["gpt"].read_bytes()
    with NbdExport(str(backed.repo), backed.points["gpt"], 0, volume="disk0-p1") as export:
        out = subprocess.run(["nbdcopy", export.uri, "-"], capture_output=True, check=True)
    assert out.stdout == raw[1 * b.MiB : 17 * b.MiB]


def test_writable_export_never_writes_the_repository(backed) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.browse.nbd import NbdExport

    with NbdExport(str(backed.repo), backed.points["btrfs"], 0, writable=True) as export:
        wrote = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", export.uri],
            capture_output=True,
            text=True,
        )
        assert wrote.returncode == 0, wrote.stdout + wrote.stderr
        back = subprocess.run(["nbdcopy", export.uri, "-"], capture_output=True, check=True).stdout
        assert back[: 1 << 20] == b"\xab" * (1 << 20)
    with NbdExport(str(backed.repo), backed.points["btrfs"], 0) as export:
        again = subprocess.run(["nbdcopy", export.uri, "-"], capture_output=True, check=True)
    assert again.stdout == backed.images["btrfs"].read_bytes()
    assert vmkeep_json("check", "--read-data", repo=backed.repo)["ok"] is True


def test_read_only_export_refuses_writes(backed) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.browse.nbd import NbdExport

    with NbdExport(str(backed.repo), backed.points["btrfs"], 0) as export:
        wrote = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 64k", export.uri],
            capture_output=True,
            text=True,
        )
    assert "write failed" in (wrote.stdout + wrote.stderr) or wrote.returncode != 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_export_stops_cleanly_on_a_signal(backed, sig: signal.Signals) -> None:
    proc = _export(backed, backed.points["gpt"])
    try:
        started = _started(proc)
        sock = started["uri"].split("socket=", 1)[1]
        assert os.path.exists(sock)
        size = subprocess.run(["nbdinfo", "--size", started["uri"]], capture_output=True, text=True)
        assert size.returncode == 0, size.stderr
        assert int(size.stdout) == backed.images["gpt"].stat().st_size
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not os.path.exists(sock)


def test_cli_export_of_a_missing_point_is_one_line(backed) -> None:  # type: ignore[no-untyped-def]
    proc = vmkeep("export", "f" * 12, "--nbd", repo=backed.repo)
    assert proc.returncode == 14
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_export_of_a_missing_disk_is_one_line_before_nbdkit(backed) -> None:  # type: ignore[no-untyped-def]
    """A disk the point does not have (was: nbdkit started, then "could not be started",
    exit 1)."""
    proc = vmkeep("export", "mbr@latest", "--nbd", "--disk", "7", repo=backed.repo)
    assert proc.returncode == 14, proc.stderr
    assert "has no disk 7 (disks: 0)" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_verify_fs_passes_every_clean_file_system(backed) -> None:  # type: ignore[no-untyped-def]
    seen = {}
    for name in ("gpt", "mbr", "btrfs"):
        out = vmkeep_json("verify", "fs", backed.points[name], repo=backed.repo)
        assert out["ok"] is True, out
        seen.update({v["fs"]: v["result"] for v in out["volumes"]})
    assert seen == {
        "ext": "clean",
        "xfs": "clean",
        "ntfs": "clean",
        "fat": "clean",
        "btrfs": "clean",
    }
    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    repo = Repository.open(str(backed.repo))
    latest = verifications.latest(repo, backed.points["gpt"])
    assert latest["fs"].ok is True
    assert {v["volume"] for v in latest["fs"].result["volumes"]} == {"disk0-p1", "disk0-p2"}
    shown = vmkeep_json("ls", backed.points["gpt"], repo=backed.repo)
    assert shown["verifications"]["fs"]["ok"] is True
    listing = vmkeep("ls", backed.points["gpt"], repo=backed.repo)
    assert "verify fs: passed" in listing.stdout


def test_verify_fs_catches_a_damaged_volume(backed, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    img = tmp_path / "broken.img"
    b.run("mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img, "8M")
    b.run("debugfs", "-w", "-R", "clri <2>", img)  # the root directory's inode wiped
    repo = tmp_path / "repo"  # its own: the session's `backed` repository stays as built
    vmkeep_json("init", repo=repo)
    point = vmkeep_json("backup", "image", str(img), "--name", "broken", repo=repo)["id"]
    code, out, err = _run_json("verify", "fs", point, repo=repo)
    assert code == 13, err
    assert out["ok"] is False
    (vol,) = out["volumes"]
    assert (vol["fs"], vol["result"]) == ("ext", "damaged")
    assert vol["exit_code"] & 4
    assert "Traceback" not in err
    assert f"disk0-whole is damaged (e2fsck exited with {vol['exit_code']})" in err


def test_verify_fs_says_which_volumes_could_not_be_checked_and_why() -> None:
    """A volume whose export or checker did not run is not called damaged: the line names the
    reason (exit 13 either way: never clean)."""
    from vmkeep.jobs.verify import _not_clean

    volumes = [
        {"volume": "disk0-p1", "result": "clean", "reason": ""},
        {"volume": "disk0-p2", "result": "damaged", "reason": "xfs_repair exited with 1"},
        {"volume": "disk1-whole", "result": "error", "reason": "nbdkit: wrong password"},
        {"volume": "disk1-swap", "result": "skipped", "reason": "no checker for swap"},
    ]
    assert _not_clean(volumes, "836b7c06aa") == (
        "disk0-p2 is damaged (xfs_repair exited with 1); disk1-whole could not be checked "
        "(nbdkit: wrong password) — restore point 836b7c06"
    )


def test_planted_verification_records_are_ignored(backed) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    repo = Repository.open(str(backed.repo))
    point, other = backed.points["evil"], backed.points["btrfs"]
    forged = {
        "format": "vmkeep-verification",
        "version": 1,
        "point": other,
        "kind": "boot",
        "time": "2026-01-01T00:00:00Z",
        "ok": True,
        "result": {},
    }
    repo.backend.put(
        f"verifications/{point}/20260101T000000Z-boot-abcd.json", json.dumps(forged).encode()
    )
    repo.backend.put(f"verifications/{point}/20260101T000001Z-fs-abcd.json", b"{not json")
    records, warnings = verifications.for_point(repo, point)
    assert records == []
    assert len(warnings) == 2
    code, out, err = _run_json("ls", point, repo=backed.repo)  # not verified, and says why
    assert code == 0 and out["verifications"] == {}, err
    assert err.count("unreadable verification record") == 2, err
    assert verifications.orphans(repo, set(repo.point_ids())) == []
    assert verifications.orphans(repo, set()) != []


def _run_json(*args: str, repo: Path) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo))
    proc = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr


def test_verify_flow_task_records_a_file_system_check(backed) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.jobs.verify import verify_fs_step
    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    repo = Repository.open(str(backed.repo))
    before = len(verifications.for_point(repo, backed.points["mbr"])[0])
    row = verify_fs_step(repo, str(backed.repo), backed.points["mbr"])  # a plain function
    assert row["ok"] is True and row["checked"], row
    assert "disk0-p1 ntfs clean" in row["detail"] and "disk0-p2 fat clean" in row["detail"]
    assert len(verifications.for_point(repo, backed.points["mbr"])[0]) == before + 1


def test_prune_deletes_the_verification_records_of_forgotten_points(tmp_path: Path) -> None:
    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("x\n")
    location = tmp_path / "repo"
    vmkeep_json("init", repo=location)
    points = []
    for name in ("kept", "short-lived"):
        img = tmp_path / f"{name}.img"
        b.run("mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img, "4M")
        points.append(vmkeep_json("backup", "image", str(img), "--name", name, repo=location))
    kept, point = points
    assert vmkeep_json("verify", "fs", point["id"], repo=location)["ok"] is True
    repo = Repository.open(str(location))
    assert verifications.for_point(repo, point["id"])[0]
    kept = kept["id"]
    verifications.record(repo, kept, "boot", True, {}, b"\x89PNG fake")
    vmkeep_json("forget", point["id"], repo=location)
    vmkeep_json("prune", "--grace", "0s", repo=location)
    assert list(repo.backend.list(f"verifications/{point['id']}/")) == []
    assert verifications.for_point(repo, kept)[0], "records of living points stay"
