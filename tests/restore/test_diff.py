"""``vmkeep diff`` on real file systems and file points: what changed between two restore points
(added, removed, modified, type changed), each disk's changed bytes from the chunk ids, and the
refusals (points of different kinds)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli, vmkeep_json


def _tree(root: Path, version: int) -> Path:
    tree = root / f"tree{version}"
    (tree / "etc").mkdir(parents=True)
    (tree / "home" / "alice").mkdir(parents=True)
    (tree / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (tree / "home" / "alice" / "report.txt").write_text("q3 numbers\n" * (1 + 99 * version))
    if version == 0:
        (tree / "etc" / "old.conf").write_text("x=1\n")
        (tree / "home" / "alice" / "photos").symlink_to("report.txt")
    else:
        (tree / "etc" / "new.conf").write_text("y=2\n")
        (tree / "home" / "alice" / "photos").mkdir()
        (tree / "home" / "alice" / "photos" / "cat.jpg").write_bytes(os.urandom(3000))
    (tree / "etc" / "motd").write_text("welcome\n")
    for path in tree.rglob("*"):  # the same times in both trees: only real changes differ
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    touched = 1_700_000_000 + 3600 * version  # motd: touched, its content unchanged
    os.utime(tree / "etc" / "motd", (touched, touched))
    return tree


def _expected(volume: str, touched: str) -> list[tuple[str, str]]:
    """Image points see a touched file as modified (``M``: metadata only); file points compare
    contents and see it as metadata updated (``U``)."""
    return [(c, volume + p) for c, p in [
        (touched, "/etc/motd"), ("+", "/etc/new.conf"), ("-", "/etc/old.conf"),
        ("T", "/home/alice/photos"), ("+", "/home/alice/photos/cat.jpg"),
        ("M", "/home/alice/report.txt")]]


def test_image_points_entries_and_changed_bytes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert vmkeep_json("init", repo=repo)
    image = tmp_path / "disk.img"
    ids = []
    for version in (0, 1):
        b.mkfs_ext4(_tree(tmp_path, version), image, 16)
        ids.append(vmkeep_json("backup", "image", str(image), "--name", "fs", repo=repo)["id"])
    got = vmkeep_json("diff", ids[0], "fs@latest", repo=repo)
    changes = [(e["change"], (e["volume"] or "") + e["path"]) for e in got["entries"]]
    assert changes == _expected("disk0-whole", "M")
    assert got["added"] == 2 and got["removed"] == 1 and got["modified"] == 2
    assert got["type_changed"] == 1 and got["bytes_added"] == 3000 + 4
    [disk] = got["disks"]
    assert disk["size"] == 16 << 20 and 0 < disk["changed_bytes"] < disk["size"]
    same = vmkeep_json("diff", ids[1], ids[1], repo=repo)
    assert same["entries"] == [] and same["disks"][0]["changed_bytes"] == 0

    code, out, err = run_cli("diff", ids[0], ids[1], repo=repo)
    assert code == 0, err
    assert "+    disk0-whole/etc/new.conf" in out and "T    disk0-whole/home/alice/photos/" in out
    assert "Entries: 2 new, 1 removed, 2 changed, 0 with new metadata only, 1 of another type" \
        in out


def test_file_points_and_mixed_kinds(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert vmkeep_json("init", repo=repo)
    ids = []
    for version in (0, 1):
        tree = _tree(tmp_path, version)
        ids.append(vmkeep_json("backup", "files", str(tree), "--name", "home", repo=repo)["id"])
    got = vmkeep_json("diff", ids[0], ids[1], repo=repo)
    assert [(e["change"], e["path"]) for e in got["entries"]] == _expected("", "U")
    assert got["modified"] == 1 and got["metadata_changed"] == 1 and got["disks"] == []

    image = tmp_path / "disk.img"
    b.mkfs_ext4(_tree(tmp_path / "i", 0), image, 16)
    point = vmkeep_json("backup", "image", str(image), "--name", "fs", repo=repo)["id"]
    code, _out, err = run_cli("diff", ids[0], point, repo=repo)
    assert code == 2 and "cannot compare a point of kind files with one of kind image" in err
    # a point whose manifest is damaged is named as damaged (exit 13, as `ls` says), not as a
    # point that does not exist (exit 14)
    manifest = repo / "manifests" / f"{ids[1]}.parquet"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 1
    manifest.write_bytes(bytes(data))
    code, _out, err = run_cli("diff", ids[0], ids[1][:8], repo=repo)
    assert code == 13 and f"manifests/{ids[1]}.parquet" in err, err
    assert "does not match its name" in err and "No restore point" not in err
