"""The CLI's contract for image backups: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]


def vmkeep(*args: str, repo: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PREFECT_API_URL="", **env)
    if repo is not None:
        full_env["VMKEEP_REPO"] = str(repo)
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=full_env)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert vmkeep("init", "--chunk-size", "64", repo=path).returncode == 0
    return path


def make_image(path: Path, size: int = 2 << 20) -> Path:
    with open(path, "wb") as f:
        f.write(os.urandom(size // 2))
        f.truncate(size)
    return path


def test_backup_list_restore_json(repo: Path, tmp_path: Path) -> None:
    img = make_image(tmp_path / "a.img")
    first = vmkeep("backup", "image", str(img), "--name", "a", "--json", repo=repo)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    for key in ("id", "bytes_read", "bytes_new", "duration_s"):
        assert key in summary
    assert summary["mode"] == "full"

    extents = tmp_path / "changed.json"
    with open(img, "r+b") as f:
        f.seek(4096)
        f.write(b"changed")
    extents.write_text(json.dumps([[4096, 7]]))
    second = vmkeep(
        "backup", "image", str(img), "--name", "a", "--changed-extents", str(extents), "--json",
        repo=repo,
    )
    data = json.loads(second.stdout)
    assert data["mode"] == "cbt" and data["bytes_read"] == 64 * 1024

    listed = json.loads(vmkeep("list", "--json", repo=repo).stdout)
    assert [p["name"] for p in listed["points"]] == ["a", "a"]
    assert {"id", "name", "time"} <= set(listed["points"][0])

    out = tmp_path / "out.img"
    restored = vmkeep("restore", "image", data["id"][:10], "--to", str(out), "--json", repo=repo)
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == img.read_bytes()
    check = vmkeep("check", "--read-data", "--json", repo=repo)
    assert check.returncode == 0 and json.loads(check.stdout)["ok"]
    everything = json.loads(check.stdout)["bytes_read"]
    # restic's name: a subset of the packs is read, without --read-data too
    halves = [vmkeep("check", "--read-data-subset", f"{n}/2", "--json", repo=repo)
              for n in (1, 2)]
    assert all(h.returncode == 0 for h in halves), [h.stderr for h in halves]
    read = [json.loads(h.stdout)["bytes_read"] for h in halves]
    assert sum(read) == everything > 0, (read, everything)  # each pack in one half
    every = vmkeep("check", "--read-data-subset", "100%", "--json", repo=repo)
    assert every.returncode == 0 and json.loads(every.stdout)["bytes_read"] == everything
    for bad_share in ("3/2", "0%", "x%"):
        bad = vmkeep("check", "--read-data-subset", bad_share, repo=repo)
        assert bad.returncode == 2 and "--read-data-subset: subset" in bad.stderr, bad.stderr


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (Debian qemu-utils)")
@pytest.mark.parametrize("subformat", ["monolithicSparse", "monolithicFlat", "streamOptimized"])
def test_vmdk_backup_restores_the_raw_content(repo: Path, tmp_path: Path, subformat: str) -> None:
    raw = make_image(tmp_path / "disk.raw", 3 << 20)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
         str(raw), str(vmdk)],
        check=True,
    )
    result = vmkeep("backup", "image", str(vmdk), "--name", "v", "--json", repo=repo)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out.raw"
    assert vmkeep("restore", "image", "v@latest", "--to", str(out), repo=repo).returncode == 0
    assert out.read_bytes() == raw.read_bytes()


def test_a_name_given_as_a_point_is_answered_with_its_latest_form(
    repo: Path, tmp_path: Path
) -> None:
    img = make_image(tmp_path / "disk.raw", 1 << 20)
    assert vmkeep("backup", "image", str(img), "--name", "web01", repo=repo).returncode == 0
    named = vmkeep("restore", "image", "web01", "--to", str(tmp_path / "out"), repo=repo)
    assert named.returncode == 14
    assert "'web01' is a name: its newest point is 'web01@latest'." in named.stderr
    unknown = vmkeep("ls", "web02", repo=repo)
    assert unknown.returncode == 14
    assert unknown.stderr.strip() == "vmkeep: No restore point matches 'web02'."


def test_check_names_each_damaged_place_once(tmp_path: Path) -> None:
    """A lost pack: one line per restore point and disk, each offset once (a 1 MiB frame and
    its pieces share one), not one line per chunk; --json keeps every chunk."""
    repo = tmp_path / "repo"
    assert vmkeep("init", repo=repo).returncode == 0  # default: frames cut into pieces
    img = tmp_path / "a.img"
    img.write_bytes(os.urandom(10 << 20))
    assert vmkeep("backup", "image", str(img), "--name", "a", repo=repo).returncode == 0
    for pack in (repo / "packs").rglob("*"):
        if pack.is_file() and pack.stat().st_size > 256 << 10:  # the data; the recipes stay
            pack.unlink()
    result = vmkeep("check", repo=repo)
    assert result.returncode == 13
    [line] = [x for x in result.stderr.splitlines() if "affects" in x]
    offsets = ", ".join(str(i << 20) for i in range(8))
    assert line.endswith(f"(a) disk 0 offsets {offsets} … (10 in all)"), line
    report = json.loads(vmkeep("check", "--json", repo=repo).stdout)
    chunks = {a["chunk"] for p in report["problems"] for a in p["affected"]}
    assert len(chunks) > 10


def test_user_errors_have_exit_codes_and_no_traceback(tmp_path: Path, repo: Path) -> None:
    cases = [
        (vmkeep("list", repo=tmp_path / "nowhere"), 10),
        (vmkeep("list"), 2),
        (vmkeep("backup", "image", str(tmp_path / "missing.img"), "--name", "x", repo=repo), 14),
        (vmkeep("restore", "image", "deadbeef", "--to", str(tmp_path / "o"), repo=repo), 14),
        (vmkeep("init", repo=repo), 10),
    ]
    bad_vmdk = tmp_path / "evil.vmdk"
    bad_vmdk.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        'createType="monolithicFlat"\nRW 2048 FLAT "/etc/passwd" 0\n'
    )
    cases.append((vmkeep("backup", "image", str(bad_vmdk), "--name", "x", repo=repo), 14))
    dotdot = tmp_path / "dotdot.vmdk"
    dotdot.write_text(bad_vmdk.read_text().replace("/etc/passwd", "../../secret-flat.vmdk"))
    cases.append((vmkeep("backup", "image", str(dotdot), "--name", "x", repo=repo), 14))
    corrupt = tmp_path / "corrupt.vmdk"
    corrupt.write_bytes(b"KDMV" + os.urandom(4096))  # sparse VMDK magic, garbage header
    cases.append((vmkeep("backup", "image", str(corrupt), "--name", "x", repo=repo), 14))
    for result, code in cases:
        assert result.returncode == code, (result.args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") <= 2, result.stderr


def test_passwords_never_on_argv_help() -> None:
    help_text = vmkeep("backup", "image", "--help").stdout
    assert "--password " not in help_text


def test_init_compression_level_is_recorded_and_used(tmp_path: Path) -> None:
    """`init --compression-level 3`: the config records it, a CPU-bound image backup stores
    its zstd blobs at 3 (check counts them per level), restores are bit-identical; a level
    outside 1..19 is a usage error that creates nothing."""
    repo = tmp_path / "repo3"
    made = vmkeep("init", "--compression-level", "3", "--json", repo=repo)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["compression_level"] == 3
    assert json.loads((repo / "config").read_text())["compression_level"] == 3
    img = tmp_path / "text.img"
    img.write_bytes(b"".join(b"line %08d of a compressible disk\n" % i for i in range(90_000)))
    done = vmkeep("backup", "image", str(img), "--name", "t", "--json", repo=repo)
    assert done.returncode == 0, done.stderr
    checked = vmkeep("check", "--read-data", "--json", repo=repo)
    assert checked.returncode == 0, checked.stderr
    levels = json.loads(checked.stdout)["zstd_levels"]["blobs"]
    assert set(levels) == {"3"}, levels
    out = tmp_path / "out.img"
    point = json.loads(done.stdout)["id"]
    restored = vmkeep("restore", "image", point, "--to", str(out), repo=repo)
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == img.read_bytes()
    for bad in ("0", "20"):
        wrong = vmkeep("init", "--compression-level", bad, repo=tmp_path / f"bad{bad}")
        assert wrong.returncode == 2, wrong.stderr
        assert "compression level must be between 1 and 19" in wrong.stderr
        assert "Traceback" not in wrong.stderr
        assert not (tmp_path / f"bad{bad}").exists()


def test_backup_image_exclude_swap(repo: Path, tmp_path: Path) -> None:
    """``--exclude-swap`` leaves the swap partition's whole chunks unread and restores them as
    zeros; the swap signature page, every other byte and the JSON account stay exact."""
    if shutil.which("mkswap") is None:
        from tests.missing import missing

        missing("mkswap (util-linux) is missing (see .ci/apt-packages)")
    from tests.disks import disk_builders as b

    mib = 1 << 20
    swap = tmp_path / "swap.part"
    swap.write_bytes(os.urandom(8 * mib))
    b.run("mkswap", swap)
    disk = b.new_disk(tmp_path / "disk.img", 12 * mib)
    b.write_mbr(disk, [(0x83, 2048, 2048), (0x82, 2 * 2048, 8 * 2048)])
    data = os.urandom(mib)
    with open(disk, "r+b") as f:
        f.seek(mib)
        f.write(data)
    b.place(disk, 2 * mib, swap)
    done = vmkeep("backup", "image", str(disk), "--name", "s", "--exclude-swap", "--json",
                  repo=repo)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # the area starts after the first 4 KiB page; whole 64 KiB chunks inside it are left out
    assert summary["bytes_excluded"] == 8 * mib - 64 * 1024, summary
    out = tmp_path / "out.img"
    restored = vmkeep("restore", "image", summary["id"], "--to", str(out), repo=repo)
    assert restored.returncode == 0, restored.stderr
    got, want = out.read_bytes(), disk.read_bytes()
    assert got[: 2 * mib + 64 * 1024] == want[: 2 * mib + 64 * 1024]
    assert got[2 * mib + 64 * 1024 : 10 * mib] == bytes(8 * mib - 64 * 1024)
    assert got[10 * mib :] == want[10 * mib :]
    plain = vmkeep("backup", "image", str(disk), "--name", "s", "--json", repo=repo)
    assert json.loads(plain.stdout)["bytes_excluded"] == 0


@pytest.mark.parametrize(("extents", "says"), [
    ("[[1e400, 1]]", "pairs of whole numbers"),  # an OverflowError traceback
    ("[[0.5, 4096]]", "pairs of whole numbers"),  # truncated to 0
    ("[[true, 4096]]", "pairs of whole numbers"),  # taken as 1
    ('{"0": 4096}', "pairs of whole numbers"),
    ("[[0, 4096, 1]]", "pairs of whole numbers"),
    ("[[0, -1]]", "negative offset or length"),
    ("[[4096, 8192], [3145728, 4096]]", "past the image's end (2097152 bytes)"),  # read nothing
])
def test_a_changed_extents_list_that_is_not_this_disks_is_refused(
    repo: Path, tmp_path: Path, extents: str, says: str
) -> None:
    img = make_image(tmp_path / "a.img")
    assert vmkeep("backup", "image", str(img), "--name", "a", repo=repo).returncode == 0
    listed = tmp_path / "changed.json"
    listed.write_text(extents)
    done = vmkeep("backup", "image", str(img), "--name", "a", "--changed-extents", str(listed),
                  repo=repo)
    assert done.returncode == 14 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert len(json.loads(vmkeep("list", "--json", repo=repo).stdout)["points"]) == 1
