"""``vmkeep ls`` / ``restore files`` / ``restore image --format vmdk`` / ``find`` through the CLI,
on real ext4, XFS, NTFS, FAT32, Btrfs and a qemu-img VMDK: round trips by hash."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.restore.restore_helpers import run_cli, sha256, tree_hashes, vmkeep, vmkeep_json

CASES = {
    # id: (image, volume, symlinks kept, mtime kept, names with spaces)
    "ext4-gpt": ("gpt", "p1", True, True, True),
    "xfs-gpt": ("gpt", "p2", True, False, False),
    "ntfs-mbr": ("mbr", "p1", True, True, True),
    "fat32-mbr": ("mbr", "p2", False, True, True),
    "btrfs": ("btrfs", "whole", True, True, True),
    "ext4-vmdk": ("vmdk", "disk0-p1", True, True, True),
}


def test_ls_point_lists_disks_and_volumes(backed):
    out = vmkeep_json("ls", backed.points["gpt"][:10], repo=backed.repo)
    vols = {v["name"]: v for v in out["volumes"]}
    assert vols["disk0-p1"]["fs"] == "ext" and vols["disk0-p2"]["fs"] == "xfs"
    assert vols["disk0-p1"]["size"] == 16 * 2**20 and vols["disk0-p1"]["disk"] == 0
    assert out["disks"][0]["size"] == 320 * 2**20
    mbr = vmkeep_json("ls", "mbr@latest", repo=backed.repo)
    assert {v["name"]: v["fs"] for v in mbr["volumes"]} == {"disk0-p1": "ntfs", "disk0-p2": "fat"}
    code, human, _ = run_cli("ls", "gpt@latest", repo=backed.repo)
    assert code == 0 and "disk0-p2" in human and "xfs" in human


def test_ls_directory_json(backed):
    out = vmkeep_json("ls", "gpt@latest:p1/", repo=backed.repo)
    rows = {r["name"]: r for r in out["entries"]}
    assert out["volume"] == "disk0-p1"
    hello = rows["hello.txt"]
    assert hello["type"] == "file" and hello["size"] == 12 and hello["mode"] == 0o644
    assert hello["mtime"].startswith("2020-09-13T12:26:40")
    assert rows["link"]["type"] == "symlink" and rows["link"]["link"] == "hello.txt"
    assert rows["many"]["type"] == "dir"
    many = vmkeep_json("ls", "gpt@latest:p1/many", repo=backed.repo)
    assert len(many["entries"]) == 400
    one = vmkeep_json("ls", "gpt@latest:p1/data/random.bin", repo=backed.repo)
    assert [r["size"] for r in one["entries"]] == [300 * 1024]
    ntfs = vmkeep_json("ls", "mbr@latest:p1/", repo=backed.repo)
    assert {r["name"]: r["streams"] for r in ntfs["entries"]}["hello.txt"] == ["secret"]


@pytest.mark.parametrize("case", list(CASES))
def test_restore_whole_volume_round_trip(backed, case, tmp_path):
    image, volume, links, mtime, spaces = CASES[case]
    target = tmp_path / "out"
    out = vmkeep_json(
        "restore", "files", f"{image}@latest:{volume}", "--to", str(target), repo=backed.repo
    )
    assert out["ok"] and out["errors"] == 0, out["skipped"]
    want = {p: h for p, h in backed.hashes.items() if spaces or " " not in p}
    got = tree_hashes(target)
    assert {p: got.get(p) for p in want} == want
    assert out["bytes"] >= sum(os.path.getsize(backed.tree / p) for p in want)
    hello = (target / "hello.txt").stat()
    assert stat.S_IMODE(hello.st_mode) in (0o644, 0o755)
    if mtime:
        assert hello.st_mtime == 1_600_000_000
    if links:
        assert os.readlink(target / "link") == "hello.txt"
        assert os.readlink(target / "dirlink") == "deep/a"
    if image == "mbr" and volume == "p1":
        assert os.getxattr(target / "hello.txt", "user.secret") == b"alternate stream data\n"
        assert out["streams"] >= 1


def test_two_chosen_entries_with_one_name_are_not_lost_in_silence(backed, tmp_path):
    """``…:p1/hello.txt`` and ``…:p2/hello.txt`` cannot both be ``DIR/hello.txt``: the first is
    restored, the second reported as ``duplicate-name`` and the restore is incomplete (exit 3),
    not an "exists" that passes as a complete restore."""
    target = tmp_path / "chosen"
    p = backed.points["gpt"][:12]
    code, out, err = run_cli(
        "restore", "files", f"{p}:p1/hello.txt", f"{p}:p2/hello.txt", f"{p}:p1/hello.txt",
        "--to", str(target), "--json", repo=backed.repo,
    )
    doc = json.loads(out)
    assert code == 3 and not doc["ok"] and doc["errors"] == 1, (code, out, err)
    assert [(w["path"], w["reason"]) for w in doc["skipped"]] == [("/hello.txt", "duplicate-name")]
    assert "disk0-p1:/hello.txt" in doc["skipped"][0]["detail"]
    assert os.listdir(target) == ["hello.txt"] and doc["files"] == 1


def test_restore_chosen_paths_by_name(backed, tmp_path):
    target = tmp_path / "chosen"
    p = backed.points["gpt"][:12]
    out = vmkeep_json(
        "restore",
        "files",
        f"{p}:p1/deep/a",
        f"{p}:p1/data/random.bin",
        f"{p}:p1/link",
        "--to",
        str(target),
        repo=backed.repo,
    )
    assert out["ok"] and out["files"] == 2 and out["symlinks"] == 1
    assert sorted(os.listdir(target)) == ["a", "link", "random.bin"]
    assert (target / "a/b/c/file.txt").read_bytes() == b"deep file\n" * 100
    assert sha256(target / "random.bin") == backed.hashes["data/random.bin"]
    # a second run skips what exists, --overwrite replaces it
    again = vmkeep_json(
        "restore", "files", f"{p}:p1/data/random.bin", "--to", str(target), repo=backed.repo
    )
    assert [w["reason"] for w in again["skipped"]] == ["exists"] and again["ok"]
    (target / "random.bin").write_bytes(b"changed")
    forced = vmkeep_json(
        "restore",
        "files",
        f"{p}:p1/data/random.bin",
        "--to",
        str(target),
        "--overwrite",
        repo=backed.repo,
    )
    assert forced["files"] == 1
    assert sha256(target / "random.bin") == backed.hashes["data/random.bin"]


def test_hostile_file_system_end_to_end(backed, tmp_path):
    target, outside = tmp_path / "target", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    target.mkdir()
    (target / "hello.txt").symlink_to(outside / "victim")  # a link planted in the target
    proc = vmkeep(
        "restore", "files", "evil@latest:whole", "--to", str(target), "--json", repo=backed.repo
    )
    # unsafe names lose data: exit 3 and "ok": false (#24); special files and "exists" are policy
    assert proc.returncode == 3, proc.stderr
    import json

    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["errors"] == 2
    reasons = {(w["path"].rsplit("/", 1)[-1], w["reason"]) for w in out["skipped"]}
    assert ("x.sh", "unsafe-name") in reasons and ("x9", "unsafe-name") in reasons
    assert ("fifo", "special-file") in reasons and ("dev", "special-file") in reasons
    assert ("hello.txt", "exists") in reasons
    assert (outside / "victim").read_text() == "precious\n"
    assert os.readlink(target / "evil") == "/etc/passwd"
    assert os.readlink(target / "up") == "../../../../../../tmp"
    assert stat.S_IMODE((target / "suid").stat().st_mode) == 0o755
    sparse = (target / "sparse").stat()
    assert sparse.st_size == 1 << 40 and sparse.st_blocks == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "target"]
    assert not Path("/x.sh").exists() and not (tmp_path / "x.sh").exists()


def test_typed_errors_and_exit_codes(backed, tmp_path):
    def code(*args: str) -> int:
        rc, _, err = run_cli(*args, repo=backed.repo)
        assert "Traceback" not in err and err.startswith(("vmkeep: ", "Usage", "Error")), err
        return rc

    proc = vmkeep("ls", "nosuchpoint", repo=backed.repo)  # a real process: one line, no traceback
    assert proc.returncode == 14 and proc.stderr.count("\n") == 1, proc.stderr
    assert code("ls", "gpt@latest:p7/") == 14
    assert code("ls", "gpt@latest:p1/nope") == 14
    assert code("restore", "files", "gpt@latest:p1/nope", "--to", str(tmp_path / "x/y")) == 14
    assert not (tmp_path / "x").exists()  # the folders it made for the restore are gone again
    (tmp_path / "kept").mkdir()
    assert code("restore", "files", "gpt@latest:p7/a", "--to", str(tmp_path / "kept")) == 14
    assert (tmp_path / "kept").is_dir()  # a folder that was there stays
    assert code("restore", "files", "gpt@latest:p1/hello.txt") == 2
    assert code("restore", "files", "gpt@latest:p1/a", "mbr@latest:p1/b", "--to", "y") == 2
    assert code("restore", "vm", "gpt@latest") == 2  # no vCenter


@pytest.mark.parametrize("image", ["gpt", "mbr"])
def test_restore_image_as_vmdk(backed, tmp_path, image):
    target = tmp_path / f"{image}.vmdk"
    out = vmkeep_json(
        "restore",
        "image",
        f"{image}@latest",
        "--to",
        str(target),
        "--format",
        "vmdk",
        repo=backed.repo,
    )
    assert out["files"] == [str(target), str(tmp_path / f"{image}-flat.vmdk")]
    assert 'createType="monolithicFlat"' in target.read_text()
    subprocess.run(
        ["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(target), str(backed.images[image])],
        check=True,
        capture_output=True,
    )
    from vmkeep.disks import open_disk

    with open_disk(target) as disk:
        assert disk.format != "raw" and disk.size == backed.images[image].stat().st_size


def test_find_builds_catalogs_once(backed):
    first = vmkeep_json("find", "random.BIN", repo=backed.repo)
    refs = {m["ref"].split(":", 1)[1] for m in first["matches"]}
    want = {f"disk0-{v}/data/random.bin" for v in ("p1", "p2", "whole")}
    assert want <= refs
    catalogs = sorted(p.name for p in (backed.repo / "catalog").iterdir())
    assert len(catalogs) == len(backed.points)
    assert set(first["catalogs_built"]) <= set(backed.points.values())
    second = vmkeep_json("find", "*/deep/a/b/*", "--name", "btrfs", repo=backed.repo)
    assert second["catalogs_built"] == []
    assert [m["path"] for m in second["matches"]] == ["/deep/a/b/c"]
    code, _out, err = run_cli("find", "deep/a/b/*", "--name", "btrfs", repo=backed.repo)
    assert code == 0 and "0 match(es)" in err  # paths start at the root: say how to match
    assert "'/deep/a/b/*', or '**/deep/a/b/*' at any depth" in err


def test_find_and_ls_name_a_damaged_directory(tmp_path):
    """A damaged directory hides its files from a search: ``find`` says which point and volume
    were not searched in full instead of answering as if they held nothing, and ``ls`` of it
    fails instead of listing it as empty."""
    from tests.disks import disk_builders as b

    img = b.overwritten_directory_image(tmp_path, "ext4", "/bad")
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    point = vmkeep_json("backup", "image", str(img), "--name", "damaged", repo=repo)["id"]
    out = vmkeep_json("find", "a-longer-file-name-*.txt", repo=repo)
    # the walk goes on past the damaged directory, whichever it meets first
    assert sorted(m["path"] for m in out["matches"]) == sorted(
        f"/good/a-longer-file-name-{i}.txt" for i in range(40)
    )
    [warning] = out["warnings"]
    assert warning["point"] == point and warning["warning"].startswith("disk0-whole/bad: ")
    assert "Damaged file system" in warning["warning"]
    code, _out, err = run_cli("find", "a-longer-file-name-1.txt", repo=repo)
    assert code == 0 and f"warning: {point[:8]}: not searched in full" in err
    # and ``ls`` of the damaged directory (the fast ext listing included) says so, exit 14
    code, out_ls, err = run_cli("ls", f"{point[:8]}:disk0-whole/bad", repo=repo)
    assert code == 14 and "Damaged file system" in err and not out_ls.strip(), (code, err)

