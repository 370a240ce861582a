"""Boot verification: a restore point boots in QEMU straight from the repository, a broken one not.

The guest disk is the lab's ``bootable-linux`` image (SYSLINUX, Debian's kernel, a busybox
initramfs that shows a login prompt; :mod:`vmkeep.lab.bootable`), backed up with the real CLI.
KVM is used when this machine's KVM can run the boot loader, else TCG (``--accel auto``).  The
timeouts are generous bounds, not speed assertions: the good point must boot within 300 s on any
machine, the broken one never boots, so it fails whatever its timeout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.restore.restore_helpers import run_cli, vmkeep_json

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(
            shutil.which(t)
            for t in ("qemu-system-x86_64", "nbdkit", "syslinux", "mcopy", "cpio", "mkfs.vfat")
        )
        or not list(Path("/boot").glob("vmlinuz-*")),
        reason="QEMU, nbdkit, syslinux, busybox-static or linux-image-amd64 missing "
        "(see .ci/apt-packages)",
    ),
]


@pytest.fixture(scope="module")
def boot_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    from vmkeep.lab.images import build_image

    root = tmp_path_factory.mktemp("boot")
    good = build_image("bootable-linux", 96 << 20, seed=5, hostname="boot01").path
    bad = root / "broken-boot-sector.raw"
    shutil.copyfile(good, bad)
    with open(bad, "r+b") as f:
        f.write(bytes(440))  # the MBR's boot code gone; partitions and signature intact
    repo = root / "repo"
    vmkeep_json("init", repo=repo)
    good_id = vmkeep_json("backup", "image", str(good), "--name", "boot01", repo=repo)["id"]
    bad_id = vmkeep_json("backup", "image", str(bad), "--name", "broken", repo=repo)["id"]
    return repo, good_id, bad_id


def test_a_good_point_boots_to_its_login_prompt(boot_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, good, _ = boot_repo
    shot = tmp_path / "screen.png"
    out = vmkeep_json(
        "verify", "boot", good, "--timeout", "540", "--screenshot", str(shot), repo=repo
    )
    assert out["ok"] is True, out["reason"] + out["serial_tail"]
    assert "boot01 login:" in out["serial_tail"]
    assert "vmkeep guest boot01 is up" in out["serial_tail"]
    assert out["firmware"] == "bios"
    assert 0 < out["bytes_fetched"] < out["disk_bytes"] // 2, "only what the boot reads"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    repository = Repository.open(str(repo))
    record = verifications.latest(repository, good)["boot"]
    assert record.ok is True
    assert verifications.screenshot(repository, record.key) == shot.read_bytes()
    listing = vmkeep_json("ls", good, repo=repo)
    assert listing["verifications"]["boot"]["ok"] is True


def test_a_point_with_a_broken_boot_sector_fails(boot_repo) -> None:  # type: ignore[no-untyped-def]
    repo, _, bad = boot_repo
    code, out, err = run_cli("verify", "boot", bad, "--timeout", "30", "--json", repo=repo)
    assert code == 13, err
    assert "did not boot" in err and "Traceback" not in err
    assert '"ok": false' in out

    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    record = verifications.latest(Repository.open(str(repo)), bad)["boot"]
    assert record.ok is False


def test_the_verify_flows_boot_task_records_and_reports(boot_repo) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.jobs.verify import verify_boot_step
    from vmkeep.storage import verifications
    from vmkeep.storage.repository import Repository

    repo, good, _ = boot_repo
    repository = Repository.open(str(repo))
    before = len(verifications.for_point(repository, good)[0])
    row = verify_boot_step(repository, str(repo), good, 540.0)  # a plain function; a hang guard
    assert row["ok"] is True, row
    assert row["detail"].startswith("booted in")
    assert "data:image/png;base64," in row["report"] and row["png"]
    assert len(verifications.for_point(repository, good)[0]) == before + 1
