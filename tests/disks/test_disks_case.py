"""Windows file systems find names in any case, as Windows does; Linux ones do not.  Paths and
entries come back with the names as stored (a restore of ``/WINDOWS`` makes ``Windows``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.errors import FsNotFoundError
from vmkeep.disks.fs import open_filesystem


def _tree(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "Windows" / "System32").mkdir(parents=True)
    (src / "Windows" / "System32" / "Hosts.txt").write_bytes(b"127.0.0.1 localhost\n")
    return src


@pytest.mark.parametrize("fs", ["ntfs", "fat", "exfat", "ext"])
def test_names_in_another_case(tmp_path: Path, fs: str) -> None:
    src = _tree(tmp_path)
    img = tmp_path / f"{fs}.img"
    if fs == "ntfs":
        b._need(b.DIRECTORY_TOOLS["ntfs"])
        b.mkfs_ntfs(src, img, tmp_path / "mnt")
    elif fs == "exfat":
        b._need(b.DIRECTORY_TOOLS["exfat"])
        b.mkfs_exfat(src, img, tmp_path / "mnt")
    elif fs == "fat":
        b._need(b.DIRECTORY_TOOLS["fat32"])
        subprocess.run(["mkfs.vfat", "-C", "-F", "32", str(img), str(40 * 1024)], check=True,
                       capture_output=True)
        subprocess.run(["mcopy", "-s", "-i", str(img), str(src / "Windows"), "::/"], check=True)
    else:
        b._need(["mke2fs"])
        b.mkfs_ext4(src, img)
    with open(img, "rb") as f:
        fsys = open_filesystem(f, fs)
        typed = "/WINDOWS/system32/HOSTS.TXT"
        if fs == "ext":  # Linux names are case-sensitive
            with pytest.raises(FsNotFoundError):
                fsys.stat(typed)
            return
        entry = fsys.stat(typed)
        assert (entry.name, entry.path) == ("Hosts.txt", "/Windows/System32/Hosts.txt")
        with fsys.open(typed) as g:
            assert g.read() == b"127.0.0.1 localhost\n"
        assert [e.path for e in fsys.listdir("/windows/SYSTEM32")] == [
            "/Windows/System32/Hosts.txt"]
        with pytest.raises(FsNotFoundError):
            fsys.stat("/Windows/System32/Hosts.txt.bak")
